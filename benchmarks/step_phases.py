"""Where the batched engine's time goes, phase by phase, and what its CUDA graphs take off a step.

In-process, one batched engine (no Ray), N streams of the seed sentence sent at once, as batching.py sends
them. The engine's phases are timed where they run, on its loop thread, each between two device
synchronisations (so on a GPU a phase's time is its launches and its kernels, without overlap with the
next): before the first step each request's start (text, tokens, inputs) and the packed prefill of the
requests that join, their keys and values written into their KV slots; per step the diffusion, the two LM
steps, the rest of the step runner (feature encoder, stop head, projections, the chunks' hand-over) and
the VAE decode of the new patches. The instrumentation wraps the engine's methods in this process only.

``--graph-probe`` (CUDA): the engine's CUDA graphs of the decode step and the VAE decode captured
(``serve_app/model/cuda_graphs.py``), then for each level's row count the whole step computed eagerly
against its graph's replay, both timed with device events, and whether the replay gives the eager step's
bits; then the levels again, with the engine stepping from its graphs (where the columns of the step's
parts stay empty: a replay is one launch).
``--sync-census`` (CUDA): the operations that make the host wait for the GPU while the
streams run (PyTorch's sync debug mode), per step and by source line.

    PYTHONPATH=. python benchmarks/step_phases.py --device cuda --preset voxcpm1.5 --levels 1,64 --graph-probe \
        --sync-census
    .venv/bin/python benchmarks/step_phases.py --levels 1,8                          # CPU, tiny model
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import engine_timings, png, save, synthetic_checkpoint, table

from serve_app.config import ModelConfig
from serve_app.model.batched import batch_engine as batched_engine
from serve_app.model.batched import layers, vae_stage
from serve_app.model.batched import runner as batched_runner
from serve_app.model.engine_factory import load_engine
from serve_app.model.types import SynthesisRequest

# (class, method, phase name); the LM step is named by the model it runs (base or residual)
PHASES: tuple[tuple[Any, str, str], ...] = (
    (batched_engine.BatchedEngine, "_start", "request start"),
    (batched_engine.BatchedEngine, "_prefilled", "prefill"),
    (batched_engine.BatchedEngine, "_launch", "step, launch"),
    (batched_engine.BatchedEngine, "_finish", "step, finish"),
    (layers.BatchedVoxCPM, "diffuse", "diffusion"),
    (layers.BatchedVoxCPM, "lm_step", "LM step"),
    (vae_stage.VAEStage, "decode_singles", "VAE decode"),
    (vae_stage.VAEStage, "decode_held", "VAE decode, grouped"),
)
STEP_PARTS = ("diffusion", "base LM step", "residual LM step", "VAE decode", "VAE decode, grouped")
INFERENCE_TIMESTEPS = SynthesisRequest.inference_timesteps  # the engine captures its graphs for it


class PhaseClock:
    """Times the engine's methods in this process, each between two device synchronisations."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self.synchronize = synchronize
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._originals: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> PhaseClock:
        for owner, method, phase in PHASES:
            original = getattr(owner, method)
            self._originals.append((owner, method, original))
            setattr(owner, method, self._timed(original, phase))
        return self

    def __exit__(self, *_: object) -> None:
        for owner, method, original in self._originals:
            setattr(owner, method, original)

    def _timed(self, original: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def timed(runner: Any, *arguments: Any) -> Any:
            name = phase
            if phase == "LM step":
                name = "base LM step" if arguments[0] is runner.model.base_lm else "residual LM step"
            self.synchronize()
            started = time.perf_counter()
            result = original(runner, *arguments)
            self.synchronize()
            self.seconds[name].append(time.perf_counter() - started)
            return result

        return timed


def level(engine: Any, streams: int, synchronize: Callable[[], None]) -> dict[str, Any]:
    with PhaseClock(synchronize) as clock:
        _, wall = engine_timings(engine, streams, inference_timesteps=INFERENCE_TIMESTEPS)
    steps = len(clock.seconds["step, launch"])  # each step is launched, then finished
    per_step = {name: 1e3 * sum(values) / steps for name, values in clock.seconds.items() if name in STEP_PARTS}
    whole = 1e3 * (sum(clock.seconds["step, launch"]) + sum(clock.seconds["step, finish"])) / steps
    return {
        "streams": streams,
        "graphs": engine.runner.graphs is not None,
        "wall_s": wall,
        "steps": steps,
        "step_ms": whole,
        "per_step_ms": per_step,
        "prefill_ms": [1e3 * seconds for seconds in clock.seconds["prefill"]],
        "request_starts_ms": 1e3 * sum(clock.seconds["request start"]),
    }


def sync_census(engine: Any, streams: int) -> dict[str, Any]:
    """The operations that make the host wait for the GPU while ``streams`` streams run (PyTorch's sync debug
    mode), per step and by the line that caused them: each one stalls the launching of the step's kernels."""
    import torch

    steps = 0
    original = batched_engine.BatchedEngine._launch

    def counted(engine: Any, first: int) -> Any:
        nonlocal steps
        steps += 1
        return original(engine, first)

    batched_engine.BatchedEngine._launch = counted
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine_timings(engine, streams, inference_timesteps=INFERENCE_TIMESTEPS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        batched_engine.BatchedEngine._launch = original
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {
        "streams": streams,
        "steps": steps,
        "syncs_per_step": sum(sites.values()) / max(steps, 1),
        "sites": dict(sites.most_common(12)),
    }


def graph_probe(engine: Any, rows: int) -> dict[str, Any]:
    """The whole decode step for ``rows`` rows, computed eagerly and replayed from the engine's graph for it
    (inputs copied in, outputs copied out, as the engine steps), and whether both give the same bits."""
    import torch

    runner, timesteps = engine.runner, INFERENCE_TIMESTEPS
    inputs = runner.blank(rows)
    for tensor in (inputs.lm_hidden, inputs.residual_hidden, inputs.condition, inputs.noise):
        tensor.normal_()
    inputs.cfg.fill_(2.0)
    inputs.positions.fill_(100)  # both write the same keys and values at position 100 of slots 0..rows-1
    groups, span = {timesteps: list(range(rows))}, batched_runner.GRAPH_SPAN_STEP

    def timed(run: Callable[[], Any]) -> float:
        times = []
        for _ in range(30):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    with torch.inference_mode():
        eager = runner.compute(inputs, groups, span).first(rows)
        replayed = runner.graphs.run(inputs, rows, span)
        same = all(
            torch.equal(getattr(eager, name), getattr(replayed, name))
            for name in ("latents", "stop", "lm_hidden", "residual_hidden")
        )
        return {
            "rows": rows,
            "eager_ms": timed(lambda: runner.compute(inputs, groups, span)),
            "graph_ms": timed(lambda: runner.graphs.run(inputs, rows, span)),
            "same_bits": same,
        }


def report(
    rows: list[dict[str, Any]], probes: list[dict[str, Any]], syncs: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    lines = []
    for row in rows:
        parts = row["per_step_ms"]
        rest = row["step_ms"] - sum(parts.values())
        lines.append(
            [
                row["streams"],
                "graphs" if row["graphs"] else "eager",
                row["steps"],
                f"{row['step_ms']:.1f}",
                *(f"{parts[name]:.1f}" if name in parts else "" for name in STEP_PARTS),
                f"{rest:.1f}",
                f"{row['request_starts_ms']:.1f}",
                " / ".join(f"{ms:.0f}" for ms in row["prefill_ms"]),
            ]
        )
    text = (
        "# Where the batched engine's time goes\n\n"
        f"{args.preset} ({args.dtype or 'preset dtype'}) on {args.device}, seed sentence, inference_timesteps 5; "
        "N streams sent at once; each phase timed between two device synchronisations on the engine's thread "
        "(ms, means per step; 'rest of step': the feature encoder, stop head, projections and the chunks' hand-over; "
        "before the first step: the requests' starts (text, tokens, inputs), and each packed prefill of the "
        "requests that joined together, their KV slots and VAE state included).\n\n"
        + table(
            [
                "streams",
                "step from",
                "steps",
                "step ms",
                *STEP_PARTS,
                "rest of step",
                "request starts ms",
                "prefill ms per join",
            ],
            lines,
        )
    )
    if probes:
        text += (
            "\nThe whole decode step, eager vs replayed from the engine's CUDA graph (device events, median of 30):\n\n"
            + table(
                ["rows", "eager ms", "graph ms", "eager / graph", "same bits"],
                [
                    [
                        p["rows"],
                        f"{p['eager_ms']:.2f}",
                        f"{p['graph_ms']:.2f}",
                        f"x{p['eager_ms'] / p['graph_ms']:.1f}",
                        p["same_bits"],
                    ]
                    for p in probes
                ],
            )
        )
    if syncs:
        text += "\nOperations that made the host wait for the GPU (PyTorch's sync debug mode):\n\n" + table(
            ["streams", "steps", "per step", "where (count)"],
            [
                [
                    c["streams"],
                    c["steps"],
                    f"{c['syncs_per_step']:.1f}",
                    ", ".join(f"{k} ({v})" for k, v in c["sites"].items()),
                ]
                for c in syncs
            ],
        )
    return text


def plot(rows: list[dict[str, Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.8))
    labels = [str(row["streams"]) for row in rows]
    bottom = [0.0] * len(rows)
    for part in STEP_PARTS:
        values = [row["per_step_ms"].get(part, 0.0) for row in rows]
        axis.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axis.set(title="batched step, by phase", xlabel="concurrent streams", ylabel="ms per step")
    axis.legend()
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--dtype", default=None, help="default: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--graph-probe", action="store_true", help="CUDA: the step eager vs its CUDA graph")
    parser.add_argument("--sync-census", action="store_true", help="CUDA: operations that make the host wait")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    import torch

    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    levels = [int(streams) for streams in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = synthetic_checkpoint(args.preset, Path(tmp) / args.preset, args.dtype)
        config = ModelConfig(
            source=str(checkpoint),
            device=args.device,
            engine="batched",
            max_batch_size=args.max_batch_size,
            cuda_graphs=False,  # the phases are the eager step's; --graph-probe captures the graphs after them
        )
        engine = load_engine(config)
        rows, probes = [], []
        for streams in levels:
            rows.append(level(engine, streams, synchronize))
            print({key: value for key, value in rows[-1].items() if key != "prefill_ms"}, flush=True)
        if args.graph_probe:
            engine._capture_graphs()
        if args.graph_probe and engine.runner.graphs is None:
            print("the decode step's CUDA graphs could not be captured (the log above says why)", flush=True)
        elif args.graph_probe:
            for streams in dict.fromkeys(levels):
                probes.append(graph_probe(engine, streams))
                print(probes[-1], flush=True)
            for streams in levels:
                rows.append(level(engine, streams, synchronize))
                print({key: value for key, value in rows[-1].items() if key != "prefill_ms"}, flush=True)
        syncs = [sync_census(engine, streams) for streams in dict.fromkeys(levels)] if args.sync_census else []
        engine.close()
    name = args.name or f"step_phases_{args.preset}_{args.device.split(':')[0]}"
    payload = {"arguments": vars(args), "levels": rows, "graph_probe": probes, "sync_census": syncs}
    save(name, payload, report(rows, probes, syncs, args))
    plot(rows, name)


if __name__ == "__main__":
    main()
