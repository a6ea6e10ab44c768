"""Overload: ten times the service's capacity on loopback, against one model replica.

Capacity is what the service holds at once: the replica's `max_ongoing_requests` (one
generating stream, the rest waiting for it) plus the `max_queued_requests` that may wait in
Serve's router. First a run at capacity, then one at `--factor` times it, `--repeat` times in
turn (this machine is noisy: the ratios are per pair, and their median is the result); each
client sends requests back to back (a shed one waits its Retry-After) until `--requests` are
sent or `--seconds` pass. Reported: accepted, shed (503), errors, time to first byte of the
accepted, how fast a shed request is answered, and whether accepted streams keep their cadence
(chunk gaps and underruns), at capacity vs overloaded.

    .venv/bin/python benchmarks/overload.py --factor 10 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from common import (
    SEED_SENTENCE,
    Outcomes,
    cpu_seconds,
    local_service,
    model_on_its_own_core,
    png,
    run_clients,
    save,
    stream_stats,
    summary,
    table,
    time_request,
)

FORM = {"text": SEED_SENTENCE, "inference_timesteps": 5}
CPU_COLUMNS = ("VoxCPMModel", "TTSIngress", "ProxyActor", "clients")


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

    cpu_before = cpu_seconds()
    wall = run_clients(clients, client)
    cpu = {name: (used - cpu_before.get(name, 0.0)) / wall for name, used in cpu_seconds().items()}
    return {
        "clients": clients,
        "sent": sent,
        "accepted": len(outcomes.streams),
        "shed": len(outcomes.shed_ms),
        "errors": len(outcomes.errors),
        "error_kinds": sorted(set(outcomes.errors)),
        "shed_answer_ms": summary(outcomes.shed_ms) if outcomes.shed_ms else None,
        **stream_stats(outcomes.streams, wall),
        "cpu_cores": cpu,  # CPU seconds per wall second, by process
    }


def report(pairs: list[list[dict]], capacity: dict[str, int], model_core: bool) -> str:
    def cell(stats: dict | None, key: str = "median") -> str:
        return "-" if not stats else f"{stats[key]:.0f}"

    total = capacity["ongoing"] + capacity["queued"]
    rows = [
        [
            f"{number}: {run['clients']} ({run['clients'] / total:.0f}x)",
            f"{run['sent']}: {run['accepted']} / {run['shed']} / {run['errors']}",
            f"{cell(run['ttfb_ms'])} / {cell(run['ttfb_ms'], 'p95')} / {cell(run['ttfb_ms'], 'p99')}",
            f"{cell(run['shed_answer_ms'])} / {cell(run['shed_answer_ms'], 'p99')}",
            f"{run['gap_ms']['median']:.1f} / {run['gap_ms']['p99']:.1f}",
            f"{run['streams_with_underrun']}/{run['accepted']}",
            f"{run['audio_s_per_wall_s']:.2f}",
            " / ".join(f"{run['cpu_cores'].get(name, 0):.2f}" for name in CPU_COLUMNS),
        ]
        for number, pair in enumerate(pairs, 1)
        for run in pair
    ]
    gaps = [over["gap_ms"]["p99"] / at["gap_ms"]["p99"] for at, over in pairs]
    throughputs = [over["audio_s_per_wall_s"] / at["audio_s_per_wall_s"] for at, over in pairs]
    return (
        f"# Overload: {pairs[0][1]['clients'] // total}x capacity against one model replica\n\n"
        f"Capacity {total} streams: {capacity['ongoing']} on the replica (1 generating, "
        f"{capacity['ongoing'] - 1} waiting for it) and {capacity['queued']} waiting in Serve's router; "
        "seed sentence, tiny synthetic model, 2-core CPU, HTTP on loopback"
        + (
            " (the model replica alone on one core; proxy, ingress, Ray and these clients on the other)"
            if model_core
            else " (every process on both cores)"
        )
        + ". Shed requests wait their "
        "Retry-After before the client's next one. Runs at capacity and overloaded alternate.\n\n"
        + table(
            [
                "run: clients",
                "sent: accepted / shed / errors",
                "accepted TTFB ms p50/p95/p99",
                "shed answered in ms p50/p99",
                "chunk gap ms p50/p99",
                "streams with underrun",
                "audio s per wall s",
                "CPU cores: " + " / ".join(CPU_COLUMNS),
            ],
            rows,
        )
        + f"\nOverloaded vs at capacity, per pair: chunk gap p99 x{' x'.join(f'{g:.2f}' for g in gaps)}, "
        f"throughput x{' x'.join(f'{t:.2f}' for t in throughputs)}; "
        f"median: chunk gap p99 x{statistics.median(gaps):.2f}, throughput x{statistics.median(throughputs):.2f}.\n"
    )


def plot(runs: list[dict], capacity: int, name: str) -> None:
    """The first pair: requests, latency and cadence at capacity vs overloaded."""
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
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (at capacity, overloaded)")
    parser.add_argument("--requests", type=int, default=5000, help="per run, shed ones included")
    parser.add_argument("--seconds", type=float, default=45.0, help="per run")
    parser.add_argument("--max-ongoing", type=int, default=5, help="the model deployment's max_ongoing_requests")
    parser.add_argument("--max-queued", type=int, default=4, help="the model deployment's max_queued_requests")
    parser.add_argument(
        "--model-core",
        action="store_true",
        help="the model replica on a core of its own, everything else on the others (as on a GPU node)",
    )
    args = parser.parse_args()
    capacity = {"ongoing": args.max_ongoing, "queued": args.max_queued}
    total = args.max_ongoing + args.max_queued
    deployment = {"max_ongoing_requests": args.max_ongoing, "max_queued_requests": args.max_queued}
    name = "overload_model_core" if args.model_core else "overload"
    with local_service(model_deployment=deployment) as url:
        time_request(url, "/api/tts/stream", FORM)  # warm
        with model_on_its_own_core() if args.model_core else contextlib.nullcontext():
            pairs = [
                [drive(url, clients, args.requests, args.seconds) for clients in (total, args.factor * total)]
                for _ in range(args.repeat)
            ]
    payload = {"capacity": capacity, "model_core": args.model_core, "pairs": pairs}
    save(name, payload, report(pairs, capacity, args.model_core))
    plot(pairs[0], total, name)


if __name__ == "__main__":
    main()
