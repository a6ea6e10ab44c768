"""Upload fuzzing through the real service: mangled audio of every allow-listed container, mutated LoRA adapter
files and broken multipart bodies (tests/fuzz_corpus.py makes them from a seed), one at a time, each answer
timed; the goal is no 5xx, no dropped connection and no hang (no answer within --timeout seconds).

The service is configs/local.yaml's graph on a fresh local Ray cluster with its synthetic VoxCPM1.5-shaped model,
plus the same graph with a VoxCPM2-shaped one under /v2 (where /api/tts reads reference_audio), each with stores
of this run only. Every replica's peak RSS over the campaign is its process's VmHWM, reset (clear_refs) after a
warm-up; a replica that restarts (a new process under the same name) is counted. Created voices and adapters are
deleted again. Results: benchmarks/results/fuzz_uploads.{json,md,png}; a case is made again alone with
``--seed S --only I``.

    flock /tmp/voxcpm-service-tests.lock .venv/bin/python benchmarks/fuzz_uploads.py --cases 2000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from common import LOCAL_CONFIG, REPO, environment, free_port, png, save, table
from processes import process_titles

sys.path.insert(0, str(REPO))  # the corpus is the tests' own
from tests.fuzz_corpus import V2, Case, Outcome, audio_seed, case, send, served_layout

PRESETS = {"v1.5": ("voxcpm", "/", "tiny-voxcpm1.5"), V2: ("v2", "/v2", "tiny-voxcpm2")}
WARMUP = {"text": "你好", "max_len": "4", "inference_timesteps": "1"}


@contextlib.contextmanager
def fuzz_service() -> Iterator[dict[str, str]]:
    """Both apps on one Serve instance, on a free loopback port; yields the base URL of each target."""
    import ray
    from ray import serve

    from serve_app.app import from_config_file

    port = free_port()
    with environment({"RAY_USAGE_STATS_ENABLED": "0", "FORWARDED_ALLOW_IPS": ""}), tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            stores = {"voices_dir": f"{tmp}/voices", "adapters_dir": f"{tmp}/adapters"}
            for name, prefix, preset in PRESETS.values():
                source = str(REPO / "checkpoints" / preset)
                app, _ = from_config_file(LOCAL_CONFIG, args_overrides=stores, source=source, synthetic_preset=preset)
                serve.run(app, name=name, route_prefix=prefix)
            base = f"http://127.0.0.1:{port}"
            yield {"v1.5": base, V2: f"{base}/v2"}
        finally:
            serve.shutdown()
            ray.shutdown()


def cluster() -> tuple[int, Path]:
    """This process's Ray cluster: its raylet's pid (every worker's parent) and its session directory."""
    from ray._private.worker import _global_node as node

    return node.all_processes["raylet"][0].process.pid, Path(node.get_session_dir_path())


def replicas() -> dict[str, int]:
    """Serve's processes of this cluster (other clusters may run on the machine) by name: app:deployment, and
    the proxy; Ray titles an actor's process after it."""
    raylet, found = cluster()[0], {}
    for pid, title in process_titles():
        command = title.split(maxsplit=1)[0] if title.strip() else ""
        if command.startswith(("ray::ServeReplica:", "ray::ProxyActor")) and parent(pid) == raylet:
            found[command.removeprefix("ray::").removeprefix("ServeReplica:").split(".")[0]] = pid
    return found


def parent(pid: int) -> int:
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return 0


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


class Memory:
    """Each replica's peak RSS since :meth:`reset`, polled between cases so a restarted one keeps its old peak."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.start_mib: dict[str, float] = {}
        self.peak_mib: dict[str, float] = {}
        self.restarts: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.pids = replicas()
        for name, pid in self.pids.items():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.start_mib[name] = status_kib(pid, "VmRSS") / 1024

    def poll(self) -> None:
        for name, pid in self.pids.items():
            self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), status_kib(pid, "VmHWM") / 1024)
        for name, pid in replicas().items():
            if self.pids.get(name) not in (None, pid):
                self.restarts[name] += 1
            self.pids[name] = pid

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": name,
                "rss_at_start_mib": round(self.start_mib.get(name, 0.0), 1),
                "peak_mib": round(self.peak_mib.get(name, 0.0), 1),
                "rss_at_end_mib": round(status_kib(pid, "VmRSS") / 1024, 1),
                "restarts": self.restarts[name],
            }
            for name, pid in sorted(self.pids.items())
        ]


def tracebacks() -> int:
    """Tracebacks in the Serve logs of this cluster so far (a handled 4xx logs none)."""
    logs = cluster()[1] / "logs" / "serve"
    return sum(path.read_text(errors="replace").count("Traceback") for path in logs.glob("*.log"))


def reason(outcome: Outcome) -> str:
    """What an answer said, its numbers and quoted parts left out: refusals grouped by why."""
    message = (outcome.error or {}).get("message", "") or outcome.text
    message = re.sub(r"\b\d[\d,.]*", "N", re.sub(r"'[^'\s]+'|\"[^\"\s]+\"|\([^)]*\)", "…", message))
    return f"{outcome.status} {(outcome.error or {}).get('code', '')}: {message[:110]}"


def record(made: Case, outcome: Outcome) -> dict[str, Any]:
    row = {"index": made.index, "family": made.family, "route": made.route + (" (v2)" if made.target == V2 else "")}
    row |= {"status": outcome.status, "ms": round(1e3 * outcome.seconds, 1), "code": (outcome.error or {}).get("code")}
    status = outcome.status
    problems = {
        "5xx": isinstance(status, int) and status >= 500,
        "hang": status == "hang",
        "dropped": str(status).startswith("dropped"),
        "error not in the contract's shape": not outcome.shape_ok,
        "valid file refused": made.expect == "2xx" and not (isinstance(status, int) and status < 300),
    }
    row["problems"] = [problem for problem, found in problems.items() if found]
    if made.family == "audio":  # the container of the file mangled: "audio = wav 16000 Hz ..."
        row["container"] = made.description.split(" = ", 1)[1].split()[0]
    if row["problems"]:
        row |= {"description": made.label, "answer": outcome.text}
    return row


def campaign(bases: dict[str, str], indices: list[int], seed: int, timeout_s: float) -> tuple[list[dict], list[dict]]:
    """Every case sent and recorded (``"reason"``: why a refusal was answered), the replicas' memory polled."""
    layout = served_layout()
    for base in bases.values():  # a first synthesis and decode on each app, before the peaks are reset
        files = {"prompt_audio": ("a.wav", audio_seed("wav", 16000, 1, 5))}
        requests.post(f"{base}/api/tts", data={**WARMUP, "prompt_text": "参考"}, files=files, timeout=120)
    memory = Memory()
    memory.reset()
    rows = []
    for count, index in enumerate(indices, 1):
        made = case(seed, index, layout)
        outcome = send(made, bases, timeout_s)
        answered = isinstance(outcome.status, int) and outcome.status < 400
        rows.append(record(made, outcome) | {"reason": "" if answered else reason(outcome)})
        if rows[-1]["problems"]:
            print(f"{rows[-1]['problems']}: {made.label[:300]} -> {rows[-1]['status']} {rows[-1].get('answer', '')}")
        if count % 25 == 0 or count == len(indices):
            memory.poll()
            print(f"{count}/{len(indices)} cases, {sum(bool(r['problems']) for r in rows)} with problems", flush=True)
    for row in sorted(rows, key=lambda row: row["ms"])[-10:]:  # the slowest, described
        row["description"] = case(seed, row["index"], layout).label
    return rows, memory.rows()


def counts(rows: list[dict], logged: int) -> dict[str, int]:
    """The campaign's outcome in numbers: the goal is 0 in every row past 4xx."""
    statuses = [row["status"] for row in rows]
    return {
        "cases": len(rows),
        "2xx": sum(isinstance(s, int) and s < 300 for s in statuses),
        "4xx": sum(isinstance(s, int) and 400 <= s < 500 for s in statuses),
        "5xx": sum(isinstance(s, int) and s >= 500 for s in statuses),
        "hangs": statuses.count("hang"),
        "dropped": sum(str(s).startswith("dropped") for s in statuses),
        "errors not in the contract's shape": sum("error not in the contract's shape" in r["problems"] for r in rows),
        "valid files refused": sum("valid file refused" in r["problems"] for r in rows),
        "tracebacks in the Serve logs": logged,
    }


def grouped(rows: list[dict]) -> tuple[list[list], list[list], collections.Counter]:
    """Statuses by family and route, audio answers by container, refusals by why (the last two taken off rows)."""
    by_route: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_container: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reasons: collections.Counter[tuple[str, str]] = collections.Counter()
    for row in rows:
        status = row["status"]
        by_route[(row["family"], row["route"])][str(status)] += 1
        if "container" in row:
            by_container[row.pop("container")][f"{status // 100}xx" if isinstance(status, int) else "other"] += 1
        if why := row.pop("reason"):
            reasons[(row["family"], why)] += 1
    columns = sorted({str(row["status"]) for row in rows}, key=lambda s: (not s.isdigit(), s))
    route_rows = [[f, r, *(c[s] or "" for s in columns), c.total()] for (f, r), c in sorted(by_route.items())]
    container_rows = [
        [name, c.total(), c["2xx"], c["4xx"], c.total() - c["2xx"] - c["4xx"]]
        for name, c in sorted(by_container.items())
    ]
    return [["family", "route", *columns, "cases"], *route_rows], container_rows, reasons


def report(rows: list[dict], mem_rows: list[dict], args: argparse.Namespace, logged: int) -> tuple[dict, str]:
    outcome = counts(rows, logged)
    (route_header, *route_rows), container_rows, reasons = grouped(rows)
    times = sorted(row["ms"] for row in rows)
    slowest = max(rows, key=lambda row: row["ms"])
    failures = [row for row in rows if row["problems"]]
    reason_rows = [[family, why.replace("|", "/"), count] for (family, why), count in reasons.most_common(30)]
    failing = "".join(f"- {r['problems']}: {r['description']} -> {r['status']} {r['answer'][:200]}\n" for r in failures)
    markdown = (
        f"# Upload fuzzing: {len(rows)} cases through the real service\n\n"
        f"Seed {args.seed}, cases sent one at a time, a hang being no answer within {args.timeout:g} s; the tiny "
        "synthetic models on CPU (configs/local.yaml's graph, and a VoxCPM2-shaped one under /v2).\n\n"
        + table(route_header, route_rows)
        + "\n"
        + table(["outcome", "count"], [[k, v] for k, v in outcome.items()])
        + "\nAudio by the container of the file mangled (one in twenty left valid):\n\n"
        + table(["container", "cases", "2xx", "4xx", "other"], container_rows)
        + f"\nAnswer times: median {statistics.median(times):.0f} ms, p99 {times[int(0.99 * (len(times) - 1))]:.0f} "
        f"ms; slowest {slowest['ms'] / 1e3:.2f} s, {slowest['status']}: case {slowest['description']}.\n\n"
        + table(
            ["replica", "RSS at start, MiB", "peak RSS, MiB", "RSS at end, MiB", "restarts"],
            [list(row.values()) for row in mem_rows],
        )
        + f"\nWhy, the {len(reason_rows)} most frequent refusals (numbers and quoted parts left out; "
        f"{len(reasons)} different in all):\n\n"
        + table(["family", "answer", "cases"], reason_rows)
        + (f"\nFailing cases:\n\n{failing}" if failures else "\nNo failing case.\n")
    )
    payload = {"seed": args.seed, "timeout_s": args.timeout, "counts": outcome, "slowest": slowest}
    payload |= {"memory": mem_rows, "failures": failures, "by_container": container_rows}
    payload["answers"] = [[*key, count] for key, count in reasons.most_common()]
    payload["cases"] = [  # one line each: index, family, route (@v2: the VoxCPM2 app), status, error code, ms
        f"{r['index']} {r['family']} {r['route'].replace(' (v2)', '@v2')} {r['status']} {r['code'] or '-'} {r['ms']}"
        for r in rows
    ]
    return payload, markdown


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    families = sorted({row["family"] for row in rows})
    statuses = sorted({str(row["status"]) for row in rows})
    bottom = [0] * len(families)
    for status in statuses:
        heights = [sum(r["family"] == f and str(r["status"]) == status for r in rows) for f in families]
        axes[0].bar(families, heights, bottom=bottom, label=status)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes[0].set(title="answers by family and status")
    axes[0].legend(fontsize=7, ncol=2)
    for family in families:
        axes[1].hist([r["ms"] for r in rows if r["family"] == family], bins=50, histtype="step", label=family, log=True)
    axes[1].set(title="answer time, ms (cases, log scale)")
    axes[1].legend()
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated case indices (instead of --cases)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without an answer that count as a hang")
    parser.add_argument("--name", default="fuzz_uploads")
    args = parser.parse_args()
    indices = [int(i) for i in args.only.split(",")] if args.only else list(range(args.cases))
    started = time.monotonic()
    with fuzz_service() as bases:
        rows, mem_rows = campaign(bases, indices, args.seed, args.timeout)
        logged, logs = tracebacks(), cluster()[1] / "logs" / "serve"
    payload, markdown = report(rows, mem_rows, args, logged)
    payload |= {"wall_s": round(time.monotonic() - started, 1), "serve_logs": str(logs)}
    save(args.name, payload, markdown + f"\nWall time {payload['wall_s']:.0f} s.\n")
    plot(rows, args.name)


if __name__ == "__main__":
    main()
