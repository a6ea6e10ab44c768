"""Cadence and concurrency: a sweep of concurrent streams against N model replicas on loopback.

Per level: time to first byte p50/p95/p99, real-time factor, gaps between chunks, underruns (a
chunk arriving after a player that started at the first byte ran out of audio), aggregate audio
seconds produced per wall second, and requests shed (503). The replica count is polled from
/health throughout. Bounded: each level sends `--per-client` streams per client, and stops early
past `--level-timeout` seconds.

    .venv/bin/python benchmarks/load.py --replicas 2 --levels 1,2,4,8
"""

from __future__ import annotations

import argparse
import threading
import time

import requests
from common import SEED_SENTENCE, Outcomes, local_service, png, run_clients, save, stream_stats, table, time_request


class ReplicaWatch(threading.Thread):
    """Samples /health's running replica count every `period` seconds."""

    def __init__(self, url: str, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.samples = url, period, []
        self.started_at = time.perf_counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                models = requests.get(f"{self.url}/health", timeout=5).json()["models"]
                count = models[0]["replicas_running"] if models else 0
            except (requests.RequestException, ValueError, KeyError):
                count = 0
            self.samples.append((time.perf_counter() - self.started_at, count))


def level(url: str, concurrency: int, per_client: int, timeout_s: float) -> dict:
    deadline = time.perf_counter() + timeout_s
    outcomes = Outcomes()

    def client() -> None:
        for _ in range(per_client):
            if time.perf_counter() > deadline:
                return
            outcomes.attempt(url, "/api/tts/stream", {"text": SEED_SENTENCE, "inference_timesteps": 5})

    wall = run_clients(concurrency, client)
    return {
        "concurrency": concurrency,
        "completed": len(outcomes.streams),
        "shed": len(outcomes.shed_ms),
        "errors": len(outcomes.errors),
        **stream_stats(outcomes.streams, wall),
    }


def report(levels: list[dict], replicas: int) -> str:
    rows = [
        [
            lv["concurrency"],
            f"{lv['completed']}/{lv['shed']}/{lv['errors']}",
            f"{lv['ttfb_ms']['median']:.0f} / {lv['ttfb_ms']['p95']:.0f} / {lv['ttfb_ms']['p99']:.0f}",
            f"{lv['rtf']['median']:.2f}",
            f"{lv['gap_ms']['median']:.1f} / {lv['gap_ms']['p99']:.1f}",
            f"{lv['streams_with_underrun']}",
            f"{lv['audio_s_per_wall_s']:.2f}",
        ]
        for lv in levels
    ]
    return (
        f"# Load: concurrent streams against {replicas} model replica(s)\n\n"
        "Seed sentence, tiny synthetic model on a 2-core CPU, Ray Serve HTTP on loopback.\n\n"
        + table(
            [
                "streams",
                "done/shed/errors",
                "TTFB ms p50/p95/p99",
                "RTF p50",
                "gap ms p50/p99",
                "streams with underrun",
                "audio s per wall s",
            ],
            rows,
        )
    )


def plot(levels: list[dict], samples: list[tuple[float, int]], replicas: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv["concurrency"] for lv in levels]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for key, label in (("median", "p50"), ("p95", "p95"), ("p99", "p99")):
        axes[0].plot(x, [lv["ttfb_ms"][key] for lv in levels], marker="o", label=label)
    axes[0].set(title="time to first byte", xlabel="concurrent streams", ylabel="ms", yscale="log")
    axes[0].legend()
    axes[1].plot(x, [lv["audio_s_per_wall_s"] for lv in levels], marker="o")
    axes[1].set(title="audio seconds per wall second", xlabel="concurrent streams", ylim=(0, None))
    for axis in axes[:2]:
        axis.set_xticks(x, [str(c) for c in x])
    axes[2].bar([str(c) for c in x], [lv["streams_with_underrun"] / max(1, lv["completed"]) for lv in levels])
    axes[2].set(title="share of streams with an underrun", xlabel="concurrent streams", ylim=(0, 1))
    if samples:
        axes[3].step([t for t, _ in samples], [n for _, n in samples], where="post")
    axes[3].set(title="model replicas running", xlabel="seconds", ylim=(0, replicas + 1))
    figure.suptitle(f"Load sweep, {replicas} replica(s), tiny synthetic model on CPU", y=1.04)
    png(figure, "load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--level-timeout", type=float, default=60.0)
    args = parser.parse_args()
    with local_service(replicas=args.replicas) as url:
        time_request(url, "/api/tts/stream", {"text": SEED_SENTENCE})  # warm
        watch = ReplicaWatch(url)
        watch.start()
        levels = [level(url, int(c), args.per_client, args.level_timeout) for c in args.levels.split(",")]
        watch.stop.set()
        watch.join()
    save(
        "load",
        {"replicas": args.replicas, "levels": levels, "replica_samples": watch.samples},
        report(levels, args.replicas),
    )
    plot(levels, watch.samples, args.replicas)


if __name__ == "__main__":
    main()
