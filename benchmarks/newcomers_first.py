"""What newcomers going first (the model setting ``first_step_alone``) does under load: the same levels with it
on and off, interleaved, ``--repeat`` times, in one process on one engine (the setting switched between
levels), so that the machine's drift falls on both alike; medians over the repetitions.

Levels (``serving_load.py``'s methods, the seed sentence): closed loop at 1, 8 and 32 clients, and open loop
(Poisson arrivals) at 70 and 90 % of the capacity the closed loop at 32 clients measured at the start, policy
off. Reported per level and setting: TTFB p50 / p90 / p95, requests/s, RTF p50, the streams that ran dry (a
player started at their first chunk) of all repetitions; and the issue's goals as ratios within each setting
(closed loop TTFB p90 at 8 clients over 1 client's; open loop TTFB p95 at 70 % over one client's).

    .venv/bin/python benchmarks/newcomers_first.py --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import png, save, synthetic_checkpoint, table
from serving_load import Engine, level_stats

SETTINGS = {"newcomers first": True, "batch step first": False}


def run_level(driver: Engine, level: str, capacity: float, seconds: float) -> dict[str, Any]:
    kind, value = level.split()
    if kind == "closed":
        return level_stats(*driver.closed(int(value), seconds))
    return level_stats(*driver.open(float(value) * capacity, seconds))


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "ttfb_p50_ms": statistics.median(run["ttfb_ms"]["median"] for run in runs),
        "ttfb_p90_ms": statistics.median(run["ttfb_ms"]["p90"] for run in runs),
        "ttfb_p95_ms": statistics.median(run["ttfb_ms"]["p95"] for run in runs),
        "requests_per_s": statistics.median(run["requests_per_s"] for run in runs),
        "rtf_p50": statistics.median(run["rtf"]["median"] for run in runs),
        "underruns": sum(run["underruns"] for run in runs),
        "requests": sum(run["requests"] for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per level")
    parser.add_argument("--levels", default="closed 1,closed 8,closed 32,open 0.7,open 0.9")
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--name", default="newcomers_first")
    args = parser.parse_args()
    levels = args.levels.split(",")
    engine_args = argparse.Namespace(
        device="cpu", cuda_graphs=True, first_step_alone=True, decode_patches=16, max_batch_size=args.max_batch_size
    )
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(level, name): [] for level in levels for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        driver = Engine(engine_args, synthetic_checkpoint(args.preset, Path(tmp) / args.preset, None))
        try:
            driver.closed(1, 2.0)  # warm
            driver.engine.scheduler.allow_newcomers_first = False  # switched on the loaded engine between levels
            capacity = level_stats(*driver.closed(args.max_batch_size, args.seconds))["requests_per_s"]
            print(f"capacity (closed loop, {args.max_batch_size} clients, batch step first): {capacity:.2f}/s")
            for repetition in range(args.repeat):
                for level in levels:
                    for name, on in SETTINGS.items():
                        driver.engine.scheduler.allow_newcomers_first = on
                        row = run_level(driver, level, capacity, args.seconds)
                        runs[level, name].append(row)
                        ttfb = row["ttfb_ms"]
                        print(
                            f"{repetition} {level:>10} {name:>16}: TTFB p50/p90/p95 {ttfb['median']:.0f}/"
                            f"{ttfb['p90']:.0f}/{ttfb['p95']:.0f} ms, {row['requests_per_s']:.2f}/s, "
                            f"ran dry {row['underruns']}",
                            flush=True,
                        )
        finally:
            driver.close()
    results = {f"{level} | {name}": medians(rows) for (level, name), rows in runs.items()}
    goals = {
        name: {
            "closed_8_over_1_p90": results[f"closed 8 | {name}"]["ttfb_p90_ms"]
            / results[f"closed 1 | {name}"]["ttfb_p90_ms"],
            "open_70_over_1_client_p95": results[f"open 0.7 | {name}"]["ttfb_p95_ms"]
            / results[f"closed 1 | {name}"]["ttfb_p95_ms"],
        }
        for name in SETTINGS
        if {"closed 1", "closed 8", "open 0.7"} <= set(levels)
    }
    markdown = (
        f"# Newcomers first: {args.preset}, batched engine, in-process, cpu (benchmarks/newcomers_first.py)\n\n"
        f"Each level {args.seconds:g} s, the two settings interleaved, {args.repeat} repetitions, medians. Open loop "
        f"at shares of {capacity:.2f} requests/s (closed loop, {args.max_batch_size} clients).\n\n"
        + table(
            ["level", "setting", "TTFB p50 / p90 / p95 ms", "requests/s", "RTF p50", "ran dry"],
            [
                [
                    level,
                    name,
                    f"{row['ttfb_p50_ms']:.1f} / {row['ttfb_p90_ms']:.1f} / {row['ttfb_p95_ms']:.1f}",
                    f"{row['requests_per_s']:.2f}",
                    f"{row['rtf_p50']:.2f}",
                    f"{row['underruns']} of {row['requests']}",
                ]
                for (level, name), row in ((key.split(" | "), row) for key, row in results.items())
            ],
        )
    )
    if goals:
        markdown += "\nGoals (at most x2), within each setting:\n\n" + "".join(
            f"- {name}: closed loop p90 at 8 clients over 1 client's x{ratios['closed_8_over_1_p90']:.2f}; open "
            f"loop p95 at 70 % over 1 client's x{ratios['open_70_over_1_client_p95']:.2f}\n"
            for name, ratios in goals.items()
        )
    save(args.name, {"arguments": vars(args), "capacity_rps": capacity, "results": results, "goals": goals}, markdown)
    plot(levels, results, args.name)


def plot(levels: list[str], results: dict[str, dict[str, float]], name: str) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.4))
    width = 0.38
    for offset, setting in enumerate(SETTINGS):
        values = [results[f"{level} | {setting}"]["ttfb_p95_ms"] for level in levels]
        axis.bar([index + offset * width for index in range(len(levels))], values, width, label=setting)
    axis.set_xticks([index + width / 2 for index in range(len(levels))], levels)
    axis.set(ylabel="time to first audio p95, ms")
    axis.legend()
    png(figure, name)


if __name__ == "__main__":
    main()
