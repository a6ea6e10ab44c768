"""Serving under load as the peers measure it: closed loop and open loop, in-process or over HTTP.

- **Closed loop** (nano-vllm-voxcpm's method): c clients, each sending its next request when its last one
  has ended, for a fixed time per level.
- **Open loop** (vLLM-Omni's users' method): requests arriving as a Poisson process at a fixed rate, whatever
  the service does with them, at rates from 10 % to 120 % of the capacity the closed loop measured (its
  highest requests per second).

First, **idle**: one request at a time, each after the service has had nothing to do for ``IDLE_PAUSE_S``
(what a request arriving at an idle service sees; the open loop's goal is measured against it).

Per level: time to first audio (TTFB) p50 / p90 / p95 / p99; RTF per request as nano-vllm-voxcpm defines it,
(wall - TTFB) / audio seconds; requests per second; audio seconds per wall second; the chunk gap's p99;
streams that underran (a player started at the first chunk ran dry); and **the knee**: the first level whose
TTFB p90 is more than twice that of the lowest level. Each request is the original guide's test sentence.

``--mode engine`` drives one engine in this process through the interface the model deployment uses (no Ray:
also how a GPU is measured); ``--mode http`` loads configs/local.yaml's graph on a local Ray cluster.

    .venv/bin/python benchmarks/serving_load.py --mode engine
    .venv/bin/python benchmarks/serving_load.py --mode http
    PYTHONPATH=. python3 benchmarks/serving_load.py --mode engine --device cuda --preset voxcpm2 --dtype bfloat16 \
        --concurrency 1,8,16,32,64 --no-open-loop --max-batch-size 64     # the side-by-side with nano-vllm-voxcpm
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    SEED_SENTENCE,
    StreamTiming,
    local_service,
    png,
    save,
    summary,
    synthetic_checkpoint,
    table,
    time_request,
    timed_stream,
)

KNEE_FACTOR = 2.0  # TTFB p90 this many times the lowest level's: latency has left its floor
IDLE_PAUSE_S = 0.5  # before each idle request: long enough for the engine's threads to sleep
OPEN_LOOP_SEED = 0  # the same arrival times every run


def level_stats(timings: Sequence[StreamTiming], wall_s: float) -> dict[str, Any]:
    """What a level's requests saw, as the peers report it."""
    return {
        "requests": len(timings),
        "requests_per_s": len(timings) / wall_s,
        "audio_s_per_wall_s": sum(t.audio_s for t in timings) / wall_s,
        "ttfb_ms": summary([1e3 * t.ttfb_s for t in timings]),
        "rtf": summary([(t.total_s - t.ttfb_s) / t.audio_s for t in timings]),
        "gap_ms": summary([1e3 * gap for t in timings for gap in t.gaps_s()] or [0.0]),
        "underruns": sum(1 for t in timings if t.underruns()[0]),
    }


def poisson_times(rate: float, seconds: float) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second over ``seconds``."""
    arrivals, clock, draw = [], 0.0, random.Random(OPEN_LOOP_SEED)
    while (clock := clock + draw.expovariate(rate)) < seconds:
        arrivals.append(clock)
    return arrivals


class Engine:
    """One engine in this process; a level's requests are asyncio tasks on one event loop."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path) -> None:
        from serve_app.config import ModelConfig
        from serve_app.model.engine_factory import load_engine
        from serve_app.model.types import SynthesisRequest

        config = ModelConfig(
            source=str(checkpoint),
            device=args.device,
            optimize=False,
            cuda_graphs=args.cuda_graphs,
            first_step_alone=args.first_step_alone,
            decode_patches=args.decode_patches,
            engine="batched",
            max_batch_size=args.max_batch_size,
        )
        self.engine = load_engine(config)
        self.request = SynthesisRequest(text=SEED_SENTENCE, retry_badcase=False)

    def one(self) -> StreamTiming:
        return asyncio.run(timed_stream(self.engine, self.request))

    def closed(self, clients: int, seconds: float) -> tuple[list[StreamTiming], float]:
        async def run() -> tuple[list[StreamTiming], float]:
            started = time.perf_counter()
            end = started + seconds

            async def client() -> list[StreamTiming]:
                done = []
                while time.perf_counter() < end:
                    done.append(await timed_stream(self.engine, self.request))
                return done

            finished = await asyncio.gather(*(client() for _ in range(clients)))
            return [t for timings in finished for t in timings], time.perf_counter() - started

        return asyncio.run(run())

    def open(self, rate: float, seconds: float) -> tuple[list[StreamTiming], float]:
        async def run() -> tuple[list[StreamTiming], float]:
            started, tasks = time.perf_counter(), []
            for arrival in poisson_times(rate, seconds):
                await asyncio.sleep(max(0.0, started + arrival - time.perf_counter()))
                tasks.append(asyncio.create_task(timed_stream(self.engine, self.request)))
            timings = await asyncio.gather(*tasks)
            return list(timings), time.perf_counter() - started

        return asyncio.run(run())

    def close(self) -> None:
        self.engine.close()


class Http:
    """configs/local.yaml's graph over HTTP; a level's requests are threads of this process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.form = {"text": SEED_SENTENCE}

    def one(self) -> StreamTiming:
        return time_request(self.url, "/api/tts/stream", self.form)

    def closed(self, clients: int, seconds: float) -> tuple[list[StreamTiming], float]:
        started = time.perf_counter()
        end, done, lock = started + seconds, [], threading.Lock()

        def client() -> None:
            while time.perf_counter() < end:
                timing = self.one()
                with lock:
                    done.append(timing)

        with ThreadPoolExecutor(clients) as pool:
            for _ in range(clients):
                pool.submit(client)
        return done, time.perf_counter() - started

    def open(self, rate: float, seconds: float) -> tuple[list[StreamTiming], float]:
        arrivals = poisson_times(rate, seconds)
        started = time.perf_counter()
        with ThreadPoolExecutor(max(1, len(arrivals))) as pool:
            futures = []
            for arrival in arrivals:
                time.sleep(max(0.0, started + arrival - time.perf_counter()))
                futures.append(pool.submit(self.one))
            timings = [future.result() for future in futures]
        return timings, time.perf_counter() - started


def knee(rows: list[dict[str, Any]], key: str) -> Any:
    """The first level whose TTFB p90 is more than ``KNEE_FACTOR`` times the lowest level's, or None."""
    floor = rows[0]["ttfb_ms"]["p90"]
    return next((row[key] for row in rows if row["ttfb_ms"]["p90"] > KNEE_FACTOR * floor), None)


def idle(driver: Any, requests: int) -> dict[str, Any]:
    """``requests`` requests one at a time, each after ``IDLE_PAUSE_S`` with nothing to do."""
    timings, started = [], time.perf_counter()
    for _ in range(requests):
        time.sleep(IDLE_PAUSE_S)
        timings.append(driver.one())
    return level_stats(timings, time.perf_counter() - started)


def goals(rows: dict[str, Any]) -> dict[str, float | None]:
    """The issue's goals as ratios within this run: closed loop at 8 clients against one (TTFB p90), open loop
    at 70 % of capacity against idle and against one client (TTFB p95)."""
    closed = {row["clients"]: row["ttfb_ms"] for row in rows["closed"]}
    opened = {round(100 * row["share"]): row["ttfb_ms"] for row in rows["open"]}

    def ratio(top: dict | None, bottom: dict | None, quantile: str) -> float | None:
        return top[quantile] / bottom[quantile] if top and bottom else None

    return {
        "closed_8_over_1_p90": ratio(closed.get(8), closed.get(1), "p90"),
        "open_70_over_idle_p95": ratio(opened.get(70), rows["idle"]["ttfb_ms"] if rows["idle"] else None, "p95"),
        "open_70_over_1_client_p95": ratio(opened.get(70), closed.get(1), "p95"),
    }


def sweep(driver: Any, args: argparse.Namespace) -> dict[str, Any]:
    idled = idle(driver, args.idle_requests) if args.idle_requests else None
    if idled:
        print(line("idle", idled), flush=True)
    closed: list[dict[str, Any]] = []
    for clients in map(int, args.concurrency.split(",")):
        row = {"clients": clients, **level_stats(*driver.closed(clients, args.seconds))}
        closed.append(row)
        print(line(f"closed c={clients}", row), flush=True)
    capacity = args.capacity or max(row["requests_per_s"] for row in closed)
    opened: list[dict[str, Any]] = []
    if args.open_loop:
        for share in map(float, args.rates.split(",")):
            row = {
                "share": share,
                "rate": share * capacity,
                **level_stats(*driver.open(share * capacity, args.seconds)),
            }
            opened.append(row)
            print(line(f"open {share:.0%}", row), flush=True)
    rows = {"idle": idled, "closed": closed, "open": opened, "capacity_rps": capacity}
    return {**rows, "goals": goals(rows)}


def line(label: str, row: dict[str, Any]) -> str:
    ttfb = row["ttfb_ms"]
    return (
        f"{label:>12}: {row['requests']:4d} requests, {row['requests_per_s']:.2f}/s, TTFB p50/p90/p95/p99 "
        f"{ttfb['median']:.0f}/{ttfb['p90']:.0f}/{ttfb['p95']:.0f}/{ttfb['p99']:.0f} ms, "
        f"RTF {row['rtf']['median']:.2f}, "
        f"{row['audio_s_per_wall_s']:.2f} audio s/s, gap p99 {row['gap_ms']['p99']:.0f} ms, "
        f"underruns {row['underruns']}"
    )


def quantiles(ttfb: dict[str, float]) -> str:
    return f"{ttfb['median']:.0f} / {ttfb['p90']:.0f} / {ttfb['p95']:.0f} / {ttfb['p99']:.0f}"


def columns(row: dict[str, Any]) -> list[Any]:
    return [
        row["requests"],
        f"{row['requests_per_s']:.2f}",
        quantiles(row["ttfb_ms"]),
        f"{row['rtf']['median']:.2f}",
        f"{row['audio_s_per_wall_s']:.2f}",
        f"{row['gap_ms']['p99']:.0f}",
        row["underruns"],
    ]


HEADER = ["requests", "requests/s", "TTFB p50 / p90 / p95 / p99 ms", "RTF p50", "audio s/s", "gap p99 ms", "underruns"]


def report(args: argparse.Namespace, rows: dict[str, Any]) -> str:
    closed, opened, capacity, idled = rows["closed"], rows["open"], rows["capacity_rps"], rows["idle"]
    where = f"in-process, {args.device}" if args.mode == "engine" else "over HTTP (configs/local.yaml's graph)"
    text = (
        f"# Serving under load: {args.preset}, batched engine, {where} (benchmarks/serving_load.py)\n\n"
        f"Each request is the original guide's test sentence; each level runs {args.seconds:g} s. RTF per request "
        "= (wall - TTFB) / audio seconds. The knee: the first level whose TTFB p90 is more than "
        f"{KNEE_FACTOR:g}x the lowest level's.\n\n"
        + (
            f"## Idle\n\nOne request at a time, each after {IDLE_PAUSE_S:g} s with nothing to do: TTFB p50 / p90 / "
            f"p95 / p99 {quantiles(idled['ttfb_ms'])} ms ({idled['requests']} requests).\n\n"
            if idled
            else ""
        )
        + "## Closed loop (c clients, each sending its next request as "
        f"its last ends)\n\nKnee: {knee(closed, 'clients') or 'not reached'}; capacity {capacity:.2f} requests/s.\n\n"
        + table(["c", *HEADER], [[row["clients"], *columns(row)] for row in closed])
    )
    if opened:
        text += (
            "\n## Open loop (Poisson arrivals at a share of that capacity)\n\n"
            f"Knee: {knee(opened, 'share') or 'not reached'} of capacity.\n\n"
            + table(
                ["rate (share)", *HEADER],
                [[f"{row['rate']:.2f}/s ({row['share']:.0%})", *columns(row)] for row in opened],
            )
        )
    measured = {name: value for name, value in rows["goals"].items() if value is not None}
    if measured:
        text += "\n## Against the goals (ratios within this run)\n\n" + "".join(
            f"- {GOAL_NAMES[name]}: x{value:.2f}\n" for name, value in measured.items()
        )
    return text


GOAL_NAMES = {
    "closed_8_over_1_p90": "closed loop, TTFB p90 at 8 clients over 1 client's (goal: at most x2)",
    "open_70_over_idle_p95": "open loop, TTFB p95 at 70 % of capacity over idle's (goal: at most x2)",
    "open_70_over_1_client_p95": "open loop, TTFB p95 at 70 % of capacity over 1 client's (closed loop)",
}


def plot(closed: list[dict], opened: list[dict], name: str) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2 if opened else 1, figsize=(10 if opened else 5, 3.4), squeeze=False)
    series: list[tuple[Any, list[dict], Callable[[dict], float], str]] = [
        (axes[0][0], closed, lambda row: row["clients"], "concurrent clients (closed loop)")
    ]
    if opened:
        series.append((axes[0][1], opened, lambda row: 100 * row["share"], "arrival rate, % of capacity (open loop)"))
    for axis, rows, x, label in series:
        for quantile in ("median", "p90", "p99"):
            axis.plot([x(row) for row in rows], [row["ttfb_ms"][quantile] for row in rows], marker="o", label=quantile)
        axis.set(xlabel=label, ylabel="time to first audio, ms", ylim=(0, None))
        axis.legend(title="TTFB")
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["engine", "http"], default="engine")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--rates", default="0.1,0.3,0.5,0.7,0.9,1.0,1.2", help="open loop, shares of capacity")
    parser.add_argument("--open-loop", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--capacity", type=float, default=None, help="the requests/s open-loop rates are shares of (default: measured)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per level")
    parser.add_argument("--idle-requests", type=int, default=20, help="requests of the idle level (0: none)")
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--dtype", default=None, help="default: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--first-step-alone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the model setting first_step_alone (default: the engine's, on where steps run eagerly): a joining "
        "stream's first step on its own, not the batch's next",
    )
    parser.add_argument(
        "--decode-patches", type=int, default=16, help="the model setting decode_patches: 1, a VAE call per patch"
    )
    parser.add_argument("--name", default=None, help="results file name (default: serving_load_<mode>)")
    args = parser.parse_args()
    name = args.name or f"serving_load_{args.mode}"
    if args.mode == "engine":
        with tempfile.TemporaryDirectory() as tmp:
            driver = Engine(args, synthetic_checkpoint(args.preset, Path(tmp) / args.preset, args.dtype))
            try:
                driver.closed(1, 2.0)  # warm
                rows = sweep(driver, args)
            finally:
                driver.close()
    else:
        top = max(map(int, args.concurrency.split(",")))
        deployment = {"max_ongoing_requests": args.max_batch_size + top, "max_queued_requests": 4 * top}
        model = {"max_batch_size": args.max_batch_size, "decode_patches": args.decode_patches}
        if args.first_step_alone is not None:
            model["first_step_alone"] = args.first_step_alone
        with local_service(model_deployment=deployment, **model) as url:
            driver = Http(url)
            driver.closed(1, 2.0)  # warm
            rows = sweep(driver, args)
    save(
        name,
        {"arguments": vars(args), **rows},
        report(args, rows),
    )
    plot(rows["closed"], rows["open"], name)


if __name__ == "__main__":
    main()
