"""Overload: ten times the service's capacity on loopback, against one model replica.

Capacity is what a replica takes at once: one generating stream plus `max_waiting_requests`
queued ones. First a run at capacity, then one at `--factor` times it; each client sends
requests back to back (a shed one waits its Retry-After) until `--requests` are sent or
`--seconds` pass. Reported: accepted, shed (503), errors, time to first byte of the accepted,
how fast a shed request is answered, and whether accepted streams keep their cadence
(chunk gaps and underruns), at capacity vs overloaded.

    .venv/bin/python benchmarks/overload.py --factor 10
"""

from __future__ import annotations

import argparse
import time

from common import (
    SEED_SENTENCE,
    Outcomes,
    local_service,
    png,
    run_clients,
    save,
    stream_stats,
    summary,
    table,
    time_request,
)

FORM = {"text": SEED_SENTENCE, "inference_timesteps": 5}


def drive(url: str, clients: int, total: int, seconds: float) -> dict:
    deadline = time.perf_counter() + seconds
    outcomes = Outcomes()
    sent = 0

    def client() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            with outcomes.lock:
                if sent >= total:
                    return
                sent += 1
            outcomes.attempt(url, "/api/tts/stream", FORM)

    wall = run_clients(clients, client)
    return {
        "clients": clients,
        "sent": sent,
        "accepted": len(outcomes.streams),
        "shed": len(outcomes.shed_ms),
        "errors": len(outcomes.errors),
        "error_kinds": sorted(set(outcomes.errors)),
        "shed_answer_ms": summary(outcomes.shed_ms) if outcomes.shed_ms else None,
        **stream_stats(outcomes.streams, wall),
    }


def report(runs: list[dict], capacity: int) -> str:
    def cell(stats: dict | None, key: str = "median") -> str:
        return "-" if not stats else f"{stats[key]:.0f}"

    rows = [
        [
            f"{run['clients']} ({run['clients'] / capacity:.0f}x)",
            f"{run['sent']}: {run['accepted']} / {run['shed']} / {run['errors']}",
            f"{cell(run['ttfb_ms'])} / {cell(run['ttfb_ms'], 'p95')} / {cell(run['ttfb_ms'], 'p99')}",
            f"{cell(run['shed_answer_ms'])} / {cell(run['shed_answer_ms'], 'p99')}",
            f"{run['gap_ms']['median']:.1f} / {run['gap_ms']['p99']:.1f}",
            f"{run['streams_with_underrun']}/{run['accepted']}",
            f"{run['audio_s_per_wall_s']:.2f}",
        ]
        for run in runs
    ]
    at, over = runs
    return (
        f"# Overload: {over['clients'] // capacity}x capacity against one model replica\n\n"
        f"Capacity {capacity} streams (1 generating + {capacity - 1} queued); seed sentence, tiny synthetic model, "
        "2-core CPU, HTTP on loopback. Shed requests wait their Retry-After before the client's next one.\n\n"
        + table(
            [
                "clients",
                "sent: accepted / shed / errors",
                "accepted TTFB ms p50/p95/p99",
                "shed answered in ms p50/p99",
                "chunk gap ms p50/p99",
                "streams with underrun",
                "audio s per wall s",
            ],
            rows,
        )
        + f"\nOverloaded vs at capacity: chunk gap p99 x{over['gap_ms']['p99'] / at['gap_ms']['p99']:.2f}, "
        f"throughput x{over['audio_s_per_wall_s'] / at['audio_s_per_wall_s']:.2f}.\n"
    )


def plot(runs: list[dict], capacity: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{run['clients']} clients" for run in runs]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].bar(labels, [run["accepted"] for run in runs], label="accepted")
    axes[0].bar(labels, [run["shed"] for run in runs], bottom=[run["accepted"] for run in runs], label="shed (503)")
    axes[0].set(title="requests")
    axes[0].legend()
    axes[1].bar(labels, [run["ttfb_ms"]["p99"] for run in runs], label="accepted TTFB p99")
    axes[1].bar(labels, [(run["shed_answer_ms"] or {"p99": 0})["p99"] for run in runs], alpha=0.6, label="503 p99")
    axes[1].set(title="latency, ms")
    axes[1].legend()
    axes[2].bar(labels, [run["gap_ms"]["p99"] for run in runs])
    axes[2].set(title="accepted streams: chunk gap p99, ms")
    figure.suptitle(f"Capacity {capacity} vs overload, one replica, tiny synthetic model on CPU", y=1.04)
    png(figure, "overload")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--requests", type=int, default=5000, help="per run, shed ones included")
    parser.add_argument("--seconds", type=float, default=45.0, help="per run")
    parser.add_argument("--max-waiting", type=int, default=4, help="the model's max_waiting_requests")
    parser.add_argument("--overload-retries", type=int, default=None, help="limits.overload_retries (default: config)")
    args = parser.parse_args()
    capacity = 1 + args.max_waiting
    limits = {} if args.overload_retries is None else {"overload_retries": args.overload_retries}
    with local_service(limits=limits, max_waiting_requests=args.max_waiting) as url:
        time_request(url, "/api/tts/stream", FORM)  # warm
        runs = [drive(url, clients, args.requests, args.seconds) for clients in (capacity, args.factor * capacity)]
    save("overload", {"capacity": capacity, "runs": runs}, report(runs, capacity))
    plot(runs, capacity)


if __name__ == "__main__":
    main()
