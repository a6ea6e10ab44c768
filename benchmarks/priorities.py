"""Live requests beside a job's, in one batched engine in this process: what background work saturating its share
of the slots costs the live streams, and what the job still gets.

Each repetition runs the same open loop of live streams (Poisson arrivals of the seed sentence at ``--rate`` per
second, ``serving_load.py``'s method) alone and beside a background load (``--background`` requests of
``--job-text`` kept in flight, non-streaming, as a job's runner would keep them) under the scheduler's two rules
for background work: its share of the slots and the live streams' step-time budget (the default), and its share
of the slots alone (``LIVE_STEP_SHARE`` lifted); then the background load alone. Conditions run in alternating
order so that the machine's drift falls on all. Reported, medians over the repetitions: live first audio p50 /
p95 and RTF p50 in each condition, their ratios to live alone (the goal: p95 at most 1.25x), and the job's items
per second beside the live load against alone.

    .venv/bin/python benchmarks/priorities.py --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import LONG_CHINESE, SEED_SENTENCE, png, save, summary, synthetic_checkpoint, table, timed_stream
from serving_load import poisson_times


class Bench:
    def __init__(self, args: argparse.Namespace, checkpoint: Path) -> None:
        from serve_app.config import ModelConfig
        from serve_app.model.batched import scheduler
        from serve_app.model.engine_factory import load_engine
        from serve_app.model.types import SynthesisRequest

        config = ModelConfig(
            source=str(checkpoint),
            device="cpu",
            optimize=False,
            engine="batched",
            max_batch_size=args.max_batch_size,
            background_share=args.background_share,
        )
        self.engine = load_engine(config)
        self.live = SynthesisRequest(text=SEED_SENTENCE, retry_badcase=False)
        self.job = SynthesisRequest(text=args.job_text, retry_badcase=False, priority="background")
        self.args = args
        self.live_step_share = scheduler.LIVE_STEP_SHARE

    def run(self, live: bool, background: bool, step_budget: bool = True) -> dict[str, Any]:
        """One condition for ``--seconds``: the live streams' timings and the job's items finished per second."""
        from serve_app.model.batched import scheduler

        args = self.args
        scheduler.LIVE_STEP_SHARE = self.live_step_share if step_budget else math.inf

        async def job_item() -> None:
            async for _ in self.engine.sentences(self.job, lambda: None):
                pass

        async def job_worker(until: float, done: list[float]) -> None:
            while time.perf_counter() < until:
                await job_item()
                done.append(time.perf_counter())

        async def run() -> dict[str, Any]:
            started = time.perf_counter()
            until = started + args.seconds
            done: list[float] = []
            workers = [job_worker(until, done) for _ in range(args.background if background else 0)]
            jobs = asyncio.gather(*workers)
            streams = []
            if live:
                for arrival in poisson_times(args.rate, args.seconds):
                    await asyncio.sleep(max(0.0, started + arrival - time.perf_counter()))
                    streams.append(asyncio.create_task(timed_stream(self.engine, self.live)))
            timings = await asyncio.gather(*streams)
            await jobs
            wall = time.perf_counter() - started
            return {
                "ttfb_ms": summary([1e3 * t.ttfb_s for t in timings]) if timings else None,
                "rtf": summary([t.rtf for t in timings]) if timings else None,
                "job_items_per_s": len(done) / wall,
            }

        return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="per condition")
    parser.add_argument("--rate", type=float, default=4.0, help="live streams per second (open loop)")
    parser.add_argument("--background", type=int, default=16, help="job requests kept in flight")
    parser.add_argument("--background-share", type=float, default=0.5)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--job-text", default=LONG_CHINESE)
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--name", default="priorities")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, synthetic_checkpoint(args.preset, Path(tmp) / "model"))
        bench.run(live=True, background=False)  # warm-up
        conditions = {
            "live alone": (True, False),
            "live beside the job": (True, True),
            "live beside the job, slots only": (True, True, False),
            "job alone": (False, True),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in conditions}
        for repetition in range(args.repeat):
            order = list(conditions) if repetition % 2 == 0 else list(reversed(conditions))
            for name in order:
                runs[name].append(bench.run(*conditions[name]))
        bench.engine.close()

    def median(name: str, key: str, stat: str | None = None) -> float:
        return statistics.median(run[key][stat] if stat else run[key] for run in runs[name])

    alone, beside, slots_only = "live alone", "live beside the job", "live beside the job, slots only"
    rows = {
        name: {
            "ttfb_p50_ms": median(name, "ttfb_ms", "median") if conditions[name][0] else None,
            "ttfb_p95_ms": median(name, "ttfb_ms", "p95") if conditions[name][0] else None,
            "rtf_p50": median(name, "rtf", "median") if conditions[name][0] else None,
            "job_items_per_s": median(name, "job_items_per_s") if conditions[name][1] else None,
        }
        for name in conditions
    }
    ratios = {
        f"{key} {name} / live alone": rows[name][key] / rows[alone][key]
        for name in (beside, slots_only)
        for key in ("ttfb_p50_ms", "ttfb_p95_ms", "rtf_p50")
    } | {
        f"job items/s {name} / job alone": rows[name]["job_items_per_s"] / rows["job alone"]["job_items_per_s"]
        for name in (beside, slots_only)
    }

    def cell(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    markdown = (
        f"Batched engine in-process, {args.preset}, max_batch_size {args.max_batch_size}, background_share "
        f"{args.background_share}; live: Poisson {args.rate}/s of the seed sentence, streamed; job: {args.background} "
        f"non-streaming requests in flight; {args.seconds:g} s per condition, medians of {args.repeat} runs.\n\n"
        + table(
            ["condition", "first audio p50 ms", "p95 ms", "RTF p50", "job items/s"],
            [
                [
                    name,
                    cell(r["ttfb_p50_ms"]),
                    cell(r["ttfb_p95_ms"]),
                    cell(r["rtf_p50"], 3),
                    cell(r["job_items_per_s"], 2),
                ]
                for name, r in rows.items()
            ],
        )
        + "\n"
        + table(["ratio", "value"], [[name, f"{value:.2f}"] for name, value in ratios.items()])
    )
    save(args.name, {"args": vars(args), "runs": runs, "rows": rows, "ratios": ratios}, markdown)
    plot(rows, args.name)


def plot(rows: dict[str, dict[str, Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 3.5))
    live = [condition for condition, row in rows.items() if row["ttfb_p50_ms"] is not None]
    for offset, (key, label) in enumerate((("ttfb_p50_ms", "p50"), ("ttfb_p95_ms", "p95"))):
        axis.bar([index + 0.4 * offset for index in range(len(live))], [rows[c][key] for c in live], 0.4, label=label)
    axis.set_xticks([index + 0.2 for index in range(len(live))], live)
    axis.set_ylabel("live first audio (ms)")
    axis.legend()
    png(figure, name)


if __name__ == "__main__":
    main()
