"""Many streams on one model instance: the reference engine against the batched engine.

Per engine and level of N concurrent streams (all sent at once, each the seed sentence): time to
first audio p50/p95, aggregate audio seconds per wall second, chunk-gap p99, streams that underrun
(a player started at the first chunk runs dry) and memory. ``--mode engine`` drives the engines
in-process through the interface the model deployment uses (no Ray; also the GPU run);
``--mode http`` sends the same load through configs/local.yaml's graph over HTTP (one model replica,
its ``max_ongoing_requests`` raised to the level so that no request waits in Serve's router), and
reports the CPU each process used; ``--model-core`` gives the model replica a core of its own, as
generation has on a GPU node, where it does not share cores with Serve's proxy and the ingress;
``--data-plane`` picks Ray Serve's data-plane variant (see overhead.py); ``--coalesce-lead-s`` sets the
model's ``stream_coalesce_lead_s`` (chunks joined once a listener is that far ahead); ``--instances K`` (engine
mode) splits each level's streams between K engine processes sharing the device, as K replicas per GPU would.

    .venv/bin/python benchmarks/batching.py --mode engine --levels 1,2,4,8,16,32 --repeat 3
    .venv/bin/python benchmarks/batching.py --mode http --levels 1,2,4,8,16,32 --repeat 3 [--model-core] \
        [--data-plane haproxy] [--coalesce-lead-s 0.3]
    PYTHONPATH=. python benchmarks/batching.py --mode engine --device cuda --preset voxcpm1.5 --dtype bfloat16 \
        --engines batched --levels 1,8,16,32,64,96 --max-batch-size 96 [--instances 2]   # a GPU: streams per GPU
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    DATA_PLANES,
    SEED_SENTENCE,
    Outcomes,
    StreamTiming,
    engine_timings,
    local_service,
    png,
    run_clients,
    save,
    stream_stats,
    synthetic_checkpoint,
    table,
    time_request,
)
from processes import cpu_seconds, cpu_seconds_since, model_on_its_own_core

from serve_app.config import ModelConfig
from serve_app.model.engine_factory import load_engine

ENGINES = ("voxcpm", "batched")
CPU_COLUMNS = ("VoxCPMModel", "TTSIngress", "ProxyActor", "clients")  # processes whose CPU an HTTP run reports


class InProcess:
    """One engine in this process."""

    def __init__(self, config: ModelConfig) -> None:
        self.engine, self.memory = load_engine(config), memory_gauge(config.device)

    def level(self, streams: int, inference_timesteps: int) -> tuple[list[StreamTiming], float, float]:
        timings, wall = engine_timings(self.engine, streams, inference_timesteps)
        return timings, wall, self.memory()

    def close(self) -> None:
        self.engine.close()


class EngineProcesses:
    """``count`` engines, each in a process of its own sharing the device (as replicas with a fraction of a
    GPU do); a level's streams are split between them as evenly as they go and sent to all at once."""

    def __init__(self, config: ModelConfig, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes, self.workers = [], []
        for _ in range(count):
            ours, theirs = context.Pipe()
            worker = context.Process(target=_engine_process, args=(config, theirs), daemon=True)
            worker.start()
            self.pipes.append(ours)
            self.workers.append(worker)
        for pipe in self.pipes:
            pipe.recv()  # loaded

    def level(self, streams: int, inference_timesteps: int) -> tuple[list[StreamTiming], float, float]:
        shares = [streams // len(self.pipes) + (index < streams % len(self.pipes)) for index in range(len(self.pipes))]
        for pipe, share in zip(self.pipes, shares, strict=True):
            pipe.send((share, inference_timesteps))
        answers = [pipe.recv() for pipe in self.pipes]
        timings = [timing for answer in answers for timing in answer[0]]
        return timings, max(answer[1] for answer in answers), sum(answer[2] for answer in answers)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for worker in self.workers:
            worker.join(timeout=60)


def _engine_process(config: ModelConfig, pipe: Any) -> None:
    engine = InProcess(config)
    pipe.send("loaded")
    while (asked := pipe.recv()) is not None:
        share, inference_timesteps = asked
        pipe.send(engine.level(share, inference_timesteps) if share else ([], 0.0, engine.memory()))
    engine.close()


def http_level(url: str, streams: int, inference_timesteps: int) -> dict[str, Any]:
    outcomes = Outcomes()
    form = {"text": SEED_SENTENCE, "inference_timesteps": inference_timesteps}
    before = cpu_seconds()
    wall = run_clients(streams, lambda: outcomes.attempt(url, "/api/tts/stream", form))
    return {
        "streams": streams,
        "shed": len(outcomes.shed_ms),
        "errors": len(outcomes.errors),
        **stream_stats(outcomes.streams, wall),
        "cpu_cores": {name: used / wall for name, used in cpu_seconds_since(before).items()},
    }


def memory_gauge(device: str) -> Callable[[], float]:
    """Memory in MiB: the GPU's peak allocation, or the process's resident memory on CPU."""
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return lambda: psutil.Process().memory_info().rss / 2**20


def run_engines(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = synthetic_checkpoint(args.preset, Path(tmp) / args.preset, args.dtype)
        for name in args.engines.split(","):
            config = ModelConfig(
                source=str(checkpoint),
                device=args.device,
                optimize=args.optimize,
                cuda_graphs=args.cuda_graphs,
                engine=name,
                max_batch_size=args.max_batch_size,
                kv_cache_length=args.kv_cache_length,
            )
            engines = InProcess(config) if args.instances == 1 else EngineProcesses(config, args.instances)
            for streams in _passes(args):
                timings, wall, memory = engines.level(streams, args.inference_timesteps)
                row = {"engine": name, "streams": streams, **stream_stats(timings, wall), "memory_mib": memory}
                rows.append(row)
                print(_line(row), flush=True)
            engines.close()
    return rows


def run_http(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    top = max(map(int, args.levels.split(",")))
    for name in args.engines.split(","):
        deployment = {"max_ongoing_requests": max(top, 2), "max_queued_requests": top}
        overrides = {
            "engine": name,
            "max_batch_size": args.max_batch_size,
            "stream_coalesce_lead_s": args.coalesce_lead_s,
        }
        with (
            local_service(env=DATA_PLANES[args.data_plane], model_deployment=deployment, **overrides) as url,
            model_on_its_own_core() if args.model_core else contextlib.nullcontext(),
        ):
            time_request(url, "/api/tts/stream", {"text": SEED_SENTENCE})  # warm
            for streams in _passes(args):
                row = {"engine": name, **http_level(url, streams, args.inference_timesteps)}
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _passes(args: argparse.Namespace) -> list[int]:
    """The levels, once per pass: repeated passes, not repeated levels, so that drift spreads over all."""
    return [int(streams) for _ in range(args.repeat) for streams in args.levels.split(",")]


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's first audio and audio per second against one stream's in the same pass (the rows come
    engine by engine, pass by pass, level 1 first when measured): ratios within one run, which a noisy
    machine's drift between passes does not skew as it does a ratio of medians."""
    one: dict[str, Any] | None = None
    for row in rows:
        if row["streams"] == 1:
            one = row
        if one is not None and one["engine"] == row["engine"]:
            row["ttfb_vs_1"] = row["ttfb_ms"]["median"] / one["ttfb_ms"]["median"]
            row["audio_vs_1"] = row["audio_s_per_wall_s"] / one["audio_s_per_wall_s"]
    return rows


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per engine and level: each number (the per-pass ratios too) the median over the passes."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["engine"], row["streams"]), []).append(row)
    return [_median(group) for group in groups.values()]


def _median(values: list[Any]) -> Any:
    first = values[0]
    if all(value == first for value in values):
        return first
    if isinstance(first, dict):
        return {key: _median([value[key] for value in values]) for key in first}
    if isinstance(first, int | float) and not isinstance(first, bool):
        return statistics.median(values)
    return first


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['engine']:8} {row['streams']:3} streams: TTFA p50 {row['ttfb_ms']['median']:.0f} ms, "
        f"p95 {row['ttfb_ms']['p95']:.0f} ms, {row['audio_s_per_wall_s']:.2f} audio s/s, "
        f"gap p99 {row['gap_ms']['p99']:.0f} ms, underruns {row['streams_with_underrun']}"
    )


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    http = args.mode == "http"
    cpu_columns = CPU_COLUMNS + (("haproxy",) if args.data_plane == "haproxy" else ())
    lines = []
    for row in rows:
        lines.append(
            [
                row["engine"],
                row["streams"],
                f"{row['ttfb_ms']['median']:.0f} / {row['ttfb_ms']['p95']:.0f}",
                f"x{row['ttfb_vs_1']:.2f}" if "ttfb_vs_1" in row else "",
                f"{row['audio_s_per_wall_s']:.2f}",
                f"x{row['audio_vs_1']:.2f}" if "audio_vs_1" in row else "",
                f"{row['gap_ms']['p99']:.0f}",
                f"{row['streams_with_underrun']}/{row['ttfb_ms']['n']}",
                f"{row['memory_mib']:.0f}" if "memory_mib" in row else "",
                *([" / ".join(f"{row['cpu_cores'].get(name, 0):.2f}" for name in cpu_columns)] if http else []),
            ]
        )
    where = "in-process engines" if not http else "HTTP through configs/local.yaml's graph, one replica"
    if args.instances > 1:
        where = f"{args.instances} engine processes sharing the device, each level's streams split between them"
    if args.model_core:
        where += ", the model replica on a core of its own"
    if args.data_plane != "default":
        where += f", Serve's {args.data_plane} data plane"
    return (
        f"# Batching: reference vs batched engine ({where})\n\n"
        f"{args.preset} ({args.dtype or 'preset dtype'}) on {args.device}, seed sentence, inference_timesteps "
        f"{args.inference_timesteps}, max_batch_size {args.max_batch_size}; N streams sent at once; medians of "
        f"{args.repeat} passes over the levels (the 'vs 1' columns: medians of each pass's own ratio).\n\n"
        + table(
            [
                "engine",
                "streams",
                "TTFA ms p50 / p95",
                "TTFA p50 vs 1",
                "audio s per wall s",
                "vs 1 stream",
                "gap ms p99",
                "underruns",
                "memory MiB",
                *(["CPU cores: " + " / ".join(cpu_columns)] if http else []),
            ],
            lines,
        )
    )


def plot(rows: list[dict[str, Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for engine in dict.fromkeys(row["engine"] for row in rows):
        mine = [row for row in rows if row["engine"] == engine]
        x = [row["streams"] for row in mine]
        axes[0].plot(x, [row["ttfb_ms"]["median"] for row in mine], marker="o", label=f"{engine} p50")
        axes[0].plot(x, [row["ttfb_ms"]["p95"] for row in mine], marker="x", linestyle="--", label=f"{engine} p95")
        axes[1].plot(x, [row["audio_s_per_wall_s"] for row in mine], marker="o", label=engine)
        axes[2].plot(x, [row["streams_with_underrun"] / row["ttfb_ms"]["n"] for row in mine], marker="o", label=engine)
    axes[0].set(title="time to first audio", xlabel="concurrent streams", ylabel="ms", xscale="log", yscale="log")
    axes[1].set(title="audio seconds per wall second", xlabel="concurrent streams", xscale="log", ylim=(0, None))
    axes[2].set(title="share of streams that underrun", xlabel="concurrent streams", xscale="log", ylim=(0, 1.05))
    for axis in axes:
        axis.legend()
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["engine", "http"], default="engine")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--levels", default="1,2,4,8,16,32")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the levels; the table shows medians")
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--dtype", default=None, help="default: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimize", action="store_true", help="the reference engine: voxcpm's torch.compile (CUDA)")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the batched engine on CUDA: decode steps replayed from CUDA graphs",
    )
    parser.add_argument("--inference-timesteps", type=int, default=5)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--instances", type=int, default=1, help="--mode engine: engines in processes of their own sharing the device"
    )
    parser.add_argument("--kv-cache-length", type=int, default=None)
    parser.add_argument(
        "--model-core",
        action="store_true",
        help="--mode http: the model replica on a core of its own, everything else on the others (as on a GPU node)",
    )
    parser.add_argument("--data-plane", choices=DATA_PLANES, default="default", help="--mode http: Ray Serve's")
    parser.add_argument(
        "--coalesce-lead-s", type=float, default=0.0, help="--mode http: the model's stream_coalesce_lead_s"
    )
    parser.add_argument("--name", default=None, help="results file name (default: from the mode and options)")
    args = parser.parse_args()
    rows = run_engines(args) if args.mode == "engine" else run_http(args)
    name = args.name or "_".join(
        ["batching", args.mode]
        + (["model_core"] if args.model_core else [])
        + ([args.data_plane] if args.data_plane != "default" else [])
        + ([f"{args.instances}_instances"] if args.instances > 1 else [])
        + (["coalesced"] if args.coalesce_lead_s else [])
    )
    table_rows = medians(with_ratios(rows))
    save(name, {"arguments": vars(args), "levels": table_rows, "passes": rows}, report(table_rows, args))
    plot(table_rows, name)


if __name__ == "__main__":
    main()
