"""``voxcpm-serve jobs submit | list | status | wait | fetch | cancel``: background jobs over ``/api/jobs``.

``submit FILE`` sends a document (plain text or Markdown: its headings start chapters); ``submit --items JSONL``
a list of items, one JSON object a line (``{"text": ..., "id": ..., "voice_id": ...}``, or a bare string). The
job's id is printed, so ``wait`` and ``fetch`` can follow in a script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from serve_app.cli.common import EXIT_REFUSED, EXIT_USAGE, CliError, auth, call

FINISHED = ("succeeded", "failed", "cancelled")
POLL_S = 1.0
BAR_WIDTH = 30


def jobs(args: argparse.Namespace) -> None:
    base = f"{args.url}/api/jobs"
    if args.action == "submit":
        print(_submit(args, base)["job_id"])
    elif args.action == "list":
        for job in call("GET", base, args.timeout, headers=auth(args)).json()["jobs"]:
            print(f"{job['job_id']}  {job['kind']:<8} {job['status']:<9} {_done(job)}")
    elif args.action == "status":
        print(json.dumps(_status(args, base), indent=2, ensure_ascii=False))
    elif args.action == "wait":
        _wait(args, base)
    elif args.action == "fetch":
        _fetch(args, base)
    elif args.action == "cancel":
        for job_id in args.job_ids:
            call("DELETE", f"{base}/{job_id}", args.timeout, headers=auth(args))


def _submit(args: argparse.Namespace, base: str) -> dict[str, Any]:
    if (args.file is None) == (args.items is None):
        raise CliError("give a document FILE or --items JSONL, not both", EXIT_USAGE)
    defaults = {"voice_id": args.voice, "seed": args.seed, "max_len": args.max_len}
    body: dict[str, Any] = {"format": args.format, "model": args.model, "timestamps": args.timestamps}
    body["defaults"] = {name: value for name, value in defaults.items() if value is not None}
    if args.file is not None:
        body["document"] = _read(args.file)
    else:
        body["items"] = [_item(line, number) for number, line in enumerate(_read(args.items).splitlines(), 1) if line]
    headers = {**auth(args), **({"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {})}
    body = {name: value for name, value in body.items() if value is not None}
    return call("POST", base, args.timeout, json=body, headers=headers).json()


def _item(line: str, number: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except ValueError:
        raise CliError(f"--items line {number} is not JSON", EXIT_USAGE) from None
    return {"text": item} if isinstance(item, str) else item


def _read(path: Path) -> str:
    return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")


def _status(args: argparse.Namespace, base: str) -> dict[str, Any]:
    return call("GET", f"{base}/{args.job_id}", args.timeout, headers=auth(args)).json()


def _done(job: dict[str, Any]) -> str:
    failed = f", {job['items_failed']} failed" if job["items_failed"] else ""
    return f"{job['items_done']}/{job['items_total']} done{failed}, {job['audio_seconds']:.1f} s of audio"


def _wait(args: argparse.Namespace, base: str) -> None:
    """Until the job is finished, a progress bar on stderr (on a terminal); its final status on stdout."""
    live = sys.stderr.isatty()
    while (job := _status(args, base))["status"] not in FINISHED:
        if live:
            done = (job["items_done"] + job["items_failed"]) / max(job["items_total"], 1)
            bar = "#" * round(done * BAR_WIDTH)
            eta = f", about {job['eta_s']:.0f} s left" if job.get("eta_s") is not None else ""
            print(f"\r[{bar:<{BAR_WIDTH}}] {_done(job)}{eta}\033[K", end="", file=sys.stderr, flush=True)
        time.sleep(POLL_S)
    if live:
        print("\r\033[K", end="", file=sys.stderr)
    print(f"{job['status']}: {_done(job)}")
    if job["status"] != "succeeded":
        raise CliError(f"job {job['status']}: {json.dumps(job.get('errors', []), ensure_ascii=False)}", EXIT_REFUSED)


def _fetch(args: argparse.Namespace, base: str) -> None:
    """The job's ZIP (manifest.jsonl and the audio) unpacked into ``-o DIR``."""
    args.output.mkdir(parents=True, exist_ok=True)
    archive = args.output / f"job-{args.job_id}.zip"
    response = call("GET", f"{base}/{args.job_id}/result", args.timeout, headers=auth(args), stream=True)
    with open(archive, "wb") as out:
        for block in response.iter_content(1 << 20):
            out.write(block)
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        opened.extractall(args.output)  # the service's own member names: an index or "document", and manifest.jsonl
    archive.unlink()
    print(f"{len(names)} files in {args.output}")


def add_parser(commands: Any, formats: tuple[str, ...]) -> None:
    job = commands.add_parser("jobs", help="background jobs: a document or a list of items")
    actions = job.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="submit a document FILE (- for stdin) or --items; prints its id")
    submit.add_argument("file", nargs="?", type=Path, help="plain text or Markdown (headings start chapters)")
    submit.add_argument("--items", type=Path, help="a JSONL file of items: {text, id?, voice_id?, ...} or strings")
    submit.add_argument("--voice", help="the saved voice every item speaks with, unless it names its own")
    submit.add_argument("--format", choices=formats, default="wav")
    submit.add_argument("--model")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--max-len", type=int, help="generation steps at most, per item or per document chunk")
    submit.add_argument("--timestamps", choices=("word", "segment"), help="times in the manifest")
    submit.add_argument("--idempotency-key", help="a retried submission with this key returns the same job")
    actions.add_parser("list", help="your jobs")
    for name, what in (("status", "a job's status (JSON)"), ("wait", "wait for a job, with a progress bar")):
        actions.add_parser(name, help=what).add_argument("job_id")
    fetch = actions.add_parser("fetch", help="download a finished job's audio and manifest into a directory")
    fetch.add_argument("job_id")
    fetch.add_argument("-o", "--output", type=Path, required=True)
    cancel = actions.add_parser("cancel", help="cancel jobs (a finished or cancelled one: delete it)")
    cancel.add_argument("job_ids", nargs="+")
    job.set_defaults(run=jobs)
