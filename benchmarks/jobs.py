"""Jobs over HTTP on configs/local.yaml's graph (the proxy, the ingress, the job runner and the model replica share
the machine's cores), three questions:

1. **Live beside a job.** An open loop of live streams (``/api/tts/stream``, the seed sentence, Poisson arrivals at
   ``--rate`` per second, ``serving_load.py``'s method) alone, and while a job of long items keeps the job runner's
   share of the model busy; alternating, ``--repeat`` times. Medians: live first audio p50 / p95 and RTF p50, and
   their ratios to live alone (the goal over HTTP: p95 at most 1.5x).
2. **Throughput.** ``--items`` items rendered as a job on the otherwise idle service, from submission to
   ``succeeded``, against the same items as direct ``/api/tts`` requests kept in flight as many as the runner
   keeps (what the runner costs: the goal, at least 80%) and a full batch's worth (what the share leaves free).
3. **A book.** A document of ``--book-sentences`` sentences, each its own chunk of ``--book-steps`` steps
   (synthetic weights never stop: a known amount of audio), rendered end to end: wall time, audio seconds, and
   each replica's peak resident memory (sampled every half second).

    .venv/bin/python benchmarks/jobs.py --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from common import StreamTiming, local_service, save, summary, table
from serving_load import Http
from soak import replica_processes

STEP_SECONDS = 2 * 735 / 44100  # the tiny VoxCPM1.5 preset's audio per step


def live_open_loop(url: str, rate: float, seconds: float) -> list[StreamTiming]:
    return Http(url).open(rate, seconds)[0]


def submit(url: str, body: dict[str, Any]) -> str:
    response = requests.post(f"{url}/api/jobs", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["job_id"]


def wait(url: str, job_id: str, poll_s: float = 0.2) -> dict[str, Any]:
    while (status := requests.get(f"{url}/api/jobs/{job_id}", timeout=60).json())["status"] in ("queued", "running"):
        time.sleep(poll_s)
    return status


def cancel(url: str, job_id: str) -> None:
    for _ in range(2):  # cancelled, then deleted
        requests.delete(f"{url}/api/jobs/{job_id}", timeout=60)


def live_beside_a_job(url: str, args: argparse.Namespace) -> dict[str, Any]:
    job_items = [{"text": "这是一个很长的后台任务句子，" * 4} for _ in range(1000)]  # more than any condition renders
    job = {"items": job_items, "defaults": {"max_len": args.job_steps}}
    runs: dict[str, list[dict[str, Any]]] = {"live alone": [], "live beside a job": []}
    live_open_loop(url, args.rate, 5)  # warm-up
    for repetition in range(args.repeat):
        order = list(runs) if repetition % 2 == 0 else list(reversed(runs))
        for name in order:
            job_id = submit(url, job) if name == "live beside a job" else None
            if job_id:
                time.sleep(2)  # the runner has filled its share
            timings = live_open_loop(url, args.rate, args.seconds)
            if job_id:
                cancel(url, job_id)
            runs[name].append(
                {"ttfb_ms": summary([1e3 * t.ttfb_s for t in timings]), "rtf": summary([t.rtf for t in timings])}
            )

    def median(name: str, key: str, stat: str) -> float:
        return statistics.median(run[key][stat] for run in runs[name])

    rows = {
        name: {
            "ttfb_p50_ms": median(name, "ttfb_ms", "median"),
            "ttfb_p95_ms": median(name, "ttfb_ms", "p95"),
            "rtf_p50": median(name, "rtf", "median"),
        }
        for name in runs
    }
    ratios = {key: rows["live beside a job"][key] / rows["live alone"][key] for key in rows["live alone"]}
    return {"runs": runs, "rows": rows, "ratios": ratios}


def direct(url: str, items: list[dict[str, Any]], settings: dict[str, Any], in_flight: int) -> float:
    """Seconds to render ``items`` as direct /api/tts requests, ``in_flight`` at a time."""

    def one(item: dict[str, Any]) -> None:
        requests.post(f"{url}/api/tts", data={"text": item["text"], **settings}, timeout=600).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(one, items))
    return time.perf_counter() - started


def throughput(url: str, args: argparse.Namespace, runner_in_flight: int) -> dict[str, Any]:
    settings = {"max_len": args.item_steps, "min_len": args.item_steps}
    items = [{"text": f"第{n}条数据的句子。"} for n in range(args.items)]
    runs: dict[str, list[float]] = {"job": [], "direct, as many in flight": [], "direct, a full batch": []}
    for _ in range(args.repeat):
        started = time.perf_counter()
        status = wait(url, submit(url, {"items": items, "defaults": settings}))
        assert status["status"] == "succeeded", status
        runs["job"].append(args.items / (time.perf_counter() - started))
        runs["direct, as many in flight"].append(args.items / direct(url, items, settings, runner_in_flight))
        runs["direct, a full batch"].append(args.items / direct(url, items, settings, args.max_batch_size))
    rows = {name: statistics.median(values) for name, values in runs.items()}
    return {"runs": runs, "items_per_s": rows, "job / direct": rows["job"] / rows["direct, as many in flight"]}


def book(url: str, args: argparse.Namespace) -> dict[str, Any]:
    # long enough that each runs to --book-steps (voxcpm's bad-case check caps a sentence by its length)
    sentences = "".join(f"这是这本书的第{n}句话，它讲的是一个很长很长的故事。" for n in range(args.book_sentences))
    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            for role, process in replica_processes().items():
                peaks[role] = max(peaks.get(role, 0.0), process.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    job_id = submit(url, {"document": sentences, "defaults": {"max_len": args.book_steps, "min_len": args.book_steps}})
    status = wait(url, job_id, poll_s=1.0)
    wall = time.perf_counter() - started
    fetched = time.perf_counter()
    size = sum(
        len(block) for block in requests.get(f"{url}/api/jobs/{job_id}/audio", stream=True).iter_content(1 << 20)
    )
    stop.set()
    sampler.join()
    return {
        "chunks": status["items_total"],
        "status": status["status"],
        "audio_s": status["audio_seconds"],
        "wall_s": wall,
        "audio_per_wall": status["audio_seconds"] / wall,
        "download_s": time.perf_counter() - fetched,
        "document_bytes": size,
        "peak_rss_mb": peaks,
    }


def report(args: argparse.Namespace, live: dict | None, rates: dict | None, books: dict | None) -> str:
    lines = []
    if live is not None:
        rows = [
            [name, f"{row['ttfb_p50_ms']:.0f}", f"{row['ttfb_p95_ms']:.0f}", f"{row['rtf_p50']:.3f}"]
            for name, row in live["rows"].items()
        ]
        lines += [
            f"Live streams at {args.rate}/s over HTTP, alone and beside a job (medians of {args.repeat}):",
            table(["condition", "first audio p50 ms", "p95 ms", "RTF p50"], rows),
            "ratios beside / alone: " + ", ".join(f"{key} {value:.2f}x" for key, value in live["ratios"].items()),
            "",
        ]
    if rates is not None:
        lines += [
            f"{args.items} items of {args.item_steps} steps (items per second, medians of {args.repeat}):",
            table(["how", "items/s"], [[name, f"{value:.2f}"] for name, value in rates["items_per_s"].items()]),
            f"job / direct with as many in flight: {rates['job / direct']:.2f}",
            "",
        ]
    if books is not None:
        peaks = ", ".join(f"{role} {mb:.0f} MiB" for role, mb in books["peak_rss_mb"].items())
        lines.append(
            f"A book of {books['chunks']} chunks: {books['audio_s'] / 60:.1f} min of audio in {books['wall_s']:.0f} s "
            f"({books['audio_per_wall']:.1f}x real time), {books['status']}; "
            f"the file ({books['document_bytes'] / 2**20:.0f} MiB) downloaded in {books['download_s']:.1f} s; "
            f"peak RSS: {peaks}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="per live condition")
    parser.add_argument("--rate", type=float, default=1.0, help="live streams per second (open loop)")
    parser.add_argument("--job-steps", type=int, default=300, help="steps of each background item (part 1)")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--item-steps", type=int, default=30)
    parser.add_argument("--book-sentences", type=int, default=360)
    parser.add_argument("--book-steps", type=int, default=150, help="steps of each chunk: 5 s of audio")
    parser.add_argument("--max-batch-size", type=int, default=8, help="configs/local.yaml's")
    parser.add_argument("--replica-share", type=float, default=0.5)
    parser.add_argument("--parts", nargs="+", default=["live", "throughput", "book"], help="which questions")
    parser.add_argument("--name", default="jobs")
    args = parser.parse_args()
    runner_in_flight = max(1, int(args.replica_share * args.max_batch_size))
    jobs = {"replica_share": args.replica_share, "chunk_chars": 1}  # the book: a chunk per sentence
    with local_service(args_overrides={"jobs": jobs}, max_batch_size=args.max_batch_size) as url:
        live = live_beside_a_job(url, args) if "live" in args.parts else None
        rates = throughput(url, args, runner_in_flight) if "throughput" in args.parts else None
        books = book(url, args) if "book" in args.parts else None
    markdown = report(args, live, rates, books)
    print(markdown)
    save(args.name, {"args": vars(args), "live": live, "throughput": rates, "book": books}, markdown)


if __name__ == "__main__":
    main()
