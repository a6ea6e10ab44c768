"""Overload: ten times the service's capacity on loopback, against one model replica.

Capacity is what the service holds at once: the replica's `max_ongoing_requests` (one
generating stream, the rest waiting for it) plus the `max_queued_requests` that may wait in
Serve's router. First a run at capacity, then one at `--factor` times it, `--repeat` times in
turn (this machine is noisy: the ratios are per pair, and their median is the result); each
client sends requests back to back (a shed one waits its Retry-After) until `--requests` are
sent or `--seconds` pass. Reported: accepted, shed (503), errors, time to first byte of the
accepted, how fast a shed request is answered, and whether accepted streams keep their cadence
(chunk gaps and underruns), at capacity vs overloaded. Chunk gaps are taken at three points: where
the model replica sends them and where the ingress receives them (the service's own histograms,
from Ray's Prometheus endpoint) and at the clients, so a tail added on the way out shows apart from
the model's own pace.

    .venv/bin/python benchmarks/overload.py --factor 10 --repeat 3 [--model-core] [--data-plane haproxy]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

from common import (
    DATA_PLANES,
    SEED_SENTENCE,
    Outcomes,
    free_port,
    histogram_buckets,
    local_service,
    png,
    run_clients,
    save,
    stream_stats,
    summary,
    table,
    time_request,
)
from processes import cpu_seconds, cpu_seconds_since, model_on_its_own_core

FORM = {"text": SEED_SENTENCE, "inference_timesteps": 5}
CPU_COLUMNS = ("VoxCPMModel", "TTSIngress", "ProxyActor", "clients")
GAP_HISTOGRAMS = {"model": "ray_voxcpm_generation_chunk_gap_seconds", "ingress": "ray_voxcpm_stream_chunk_gap_seconds"}
LATE_GAP_S = 0.08  # a bound of those histograms' buckets
METRICS_SETTLE_S = 2.5  # replicas report their metrics every second


def drive(url: str, metrics_port: int, clients: int, total: int, seconds: float) -> dict:
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

    gaps_before, cpu_before = histogram_buckets(metrics_port, list(GAP_HISTOGRAMS.values())), cpu_seconds()
    wall = run_clients(clients, client)
    cpu = {name: used / wall for name, used in cpu_seconds_since(cpu_before).items()}
    time.sleep(METRICS_SETTLE_S)
    gaps_after = histogram_buckets(metrics_port, list(GAP_HISTOGRAMS.values()))
    client_gaps = [gap for timing in outcomes.streams for gap in timing.gaps_s()]
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
        "gaps_by_hop": {
            **{hop: service_gaps(gaps_before[name], gaps_after[name]) for hop, name in GAP_HISTOGRAMS.items()},
            "client": {
                "gaps": len(client_gaps),
                "late_share": sum(gap > LATE_GAP_S for gap in client_gaps) / len(client_gaps),
            },
        },
    }


def service_gaps(before: dict[float, float], after: dict[float, float]) -> dict:
    """A run's chunk gaps from a histogram's cumulative buckets: the bucket its p99 falls in, the share late."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts[math.inf]
    lower = 0.0
    for bound, count in counts.items():
        if count >= 0.99 * total:
            break
        lower = bound
    return {"gaps": total, "p99_bucket_ms": [1e3 * lower, 1e3 * bound], "late_share": 1 - counts[LATE_GAP_S] / total}


def report(pairs: list[list[dict]], capacity: dict[str, int], model_core: bool, data_plane: str) -> str:
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
            " / ".join(f"{hop['p99_bucket_ms'][0]:.0f}-{hop['p99_bucket_ms'][1]:.0f}" for hop in service_hops(run)),
            " / ".join(f"{100 * hop['late_share']:.1f}%" for hop in run["gaps_by_hop"].values()),
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
        f"# Overload: {pairs[0][1]['clients'] // total}x capacity against one model replica"
        + (
            ""
            if data_plane == "default"
            else f", {data_plane} data plane ({' '.join(f'{k}={v}' for k, v in DATA_PLANES[data_plane].items())})"
        )
        + "\n\n"
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
                "client chunk gap ms p50/p99",
                "chunk gap p99 ms at the model / ingress (bucket)",
                f"chunk gaps over {LATE_GAP_S * 1e3:.0f} ms: model / ingress / client",
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


def service_hops(run: dict) -> list[dict]:
    return [run["gaps_by_hop"][hop] for hop in GAP_HISTOGRAMS]


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
    hops = list(runs[0]["gaps_by_hop"])
    width = 0.8 / len(hops)
    for offset, hop in enumerate(hops):
        positions = [index + (offset - (len(hops) - 1) / 2) * width for index in range(len(runs))]
        shares = [100 * run["gaps_by_hop"][hop]["late_share"] for run in runs]
        axes[2].bar(positions, shares, width=width, label=f"at the {hop}")
    axes[2].set_xticks(range(len(runs)), labels)
    axes[2].set(title=f"accepted streams: chunk gaps over {LATE_GAP_S * 1e3:.0f} ms, %")
    axes[2].legend()
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
    parser.add_argument("--data-plane", choices=DATA_PLANES, default="default", help="Ray Serve's (see overhead.py)")
    args = parser.parse_args()
    capacity = {"ongoing": args.max_ongoing, "queued": args.max_queued}
    total = args.max_ongoing + args.max_queued
    deployment = {"max_ongoing_requests": args.max_ongoing, "max_queued_requests": args.max_queued}
    name = (
        "overload"
        + ("_model_core" if args.model_core else "")
        + ("" if args.data_plane == "default" else f"_{args.data_plane}")
    )
    metrics_port = free_port()
    with local_service(env=DATA_PLANES[args.data_plane], model_deployment=deployment, metrics_port=metrics_port) as url:
        time_request(url, "/api/tts/stream", FORM)  # warm
        with model_on_its_own_core() if args.model_core else contextlib.nullcontext():
            pairs = [
                [
                    drive(url, metrics_port, clients, args.requests, args.seconds)
                    for clients in (total, args.factor * total)
                ]
                for _ in range(args.repeat)
            ]
    payload = {"capacity": capacity, "model_core": args.model_core, "data_plane": args.data_plane, "pairs": pairs}
    save(name, payload, report(pairs, capacity, args.model_core, args.data_plane))
    plot(pairs[0], total, name)


if __name__ == "__main__":
    main()
