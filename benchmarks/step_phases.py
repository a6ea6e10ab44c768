"""Where the batched engine's time goes, phase by phase, and what a CUDA graph would take off a step.

In-process, one batched engine (no Ray), N streams of the seed sentence sent at once, as batching.py sends
them. The engine's phases are timed where they run, on its loop thread, each between two device
synchronisations (so on a GPU a phase's time is its launches and its kernels, without overlap with the
next): before the first step each request's start (text, tokens, inputs) and the packed prefill of the
requests that join, their keys and values written into their KV slots; per step the diffusion, the two LM
steps, the rest of the step runner (feature encoder, stop head, projections, the chunks' hand-over) and
the VAE decode of the new patches. The instrumentation wraps the engine's methods in this process only.

``--graph-probe`` (CUDA): the step's model parts for N rows (the two LM steps, one diffusion-estimator
call) run eagerly and replayed from a captured CUDA graph, both timed with device events, and whether the
replay gives the same bits: whether a step is bound by kernel launches (the graph much faster) or by the
kernels themselves. ``--sync-census`` (CUDA): the operations that make the host wait for the GPU while the
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
from serve_app.model.batched import engine as batched_engine
from serve_app.model.batched import step_runner
from serve_app.model.engine import load_engine

# (class, method, phase name); the LM step is named by the model it runs (base or residual)
PHASES: tuple[tuple[Any, str, str], ...] = (
    (batched_engine.BatchedEngine, "_start", "request start"),
    (batched_engine.BatchedEngine, "_prefilled", "prefill"),
    (batched_engine.BatchedEngine, "_step", "step, whole"),
    (step_runner.StepRunner, "_diffuse", "diffusion"),
    (step_runner.StepRunner, "_lm_step", "LM step"),
    (batched_engine.BatchedEngine, "_decode_streams", "VAE decode"),
)
STEP_PARTS = ("diffusion", "base LM step", "residual LM step", "VAE decode")


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
        _, wall = engine_timings(engine, streams, inference_timesteps=5)
    steps = len(clock.seconds["step, whole"])
    per_step = {name: 1e3 * sum(values) / steps for name, values in clock.seconds.items() if name in STEP_PARTS}
    whole = 1e3 * statistics.mean(clock.seconds["step, whole"])
    return {
        "streams": streams,
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
    original = batched_engine.BatchedEngine._step

    def counted(runner: Any) -> None:
        nonlocal steps
        steps += 1
        original(runner)

    batched_engine.BatchedEngine._step = counted
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine_timings(engine, streams, inference_timesteps=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        batched_engine.BatchedEngine._step = original
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {
        "streams": streams,
        "steps": steps,
        "syncs_per_step": sum(sites.values()) / max(steps, 1),
        "sites": dict(sites.most_common(12)),
    }


def graph_probe(engine: Any, rows: int) -> list[dict[str, Any]]:
    """The step's model parts for ``rows`` rows (the two LM steps, one call of the diffusion estimator on the
    conditional and unconditional rows), each eager against a CUDA graph's replay of it."""
    import torch

    runner = engine._runner
    model = runner.model
    device, dtype = model.device, next(model.base_lm.parameters()).dtype
    hidden = torch.randn(rows, model.base_lm.config.hidden_size, device=device, dtype=dtype)
    positions = torch.full((rows,), 100, device=device)
    span = step_runner.ATTENDED_POSITIONS_STEP
    with torch.inference_mode():
        mu = runner._dit_input(model.lm_to_dit_proj(hidden), model.res_to_dit_proj(hidden))
    cfm = model.feat_decoder
    noise = torch.randn(2 * rows, cfm.in_channels, model.patch_size, device=device, dtype=dtype)
    times = torch.full((2 * rows,), 0.5, device=device, dtype=dtype)
    parts = {
        "base LM step": lambda: runner._lm_step(model.base_lm, runner.base_kv, positions, span, hidden),
        "residual LM step": lambda: runner._lm_step(model.residual_lm, runner.residual_kv, positions, span, hidden),
        "diffusion estimator": lambda: cfm.estimator(noise, torch.cat([mu, mu]), times, noise, times),
    }
    return [{"rows": rows, "part": part, **_graph_vs_eager(work)} for part, work in parts.items()]


def _graph_vs_eager(work: Callable[[], Any]) -> dict[str, Any]:
    """``work`` timed eagerly and replayed from a CUDA graph (device events, median of 30), and whether the
    replay gives the eager run's bits."""
    import torch

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
        eager = work().clone()
        eager_ms = timed(work)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                work()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = work()
        graph.replay()
        torch.cuda.synchronize()
        return {"eager_ms": eager_ms, "graph_ms": timed(graph.replay), "same_bits": bool(torch.equal(captured, eager))}


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
                row["steps"],
                f"{row['step_ms']:.1f}",
                *(f"{parts.get(name, 0.0):.1f}" for name in STEP_PARTS),
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
            "\nThe step's model parts, eager vs replayed from a CUDA graph (device events, median of 30):\n\n"
            + table(
                ["rows", "part", "eager ms", "graph ms", "eager / graph", "same bits"],
                [
                    [
                        p["rows"],
                        p["part"],
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
    parser.add_argument("--optimize", action="store_true", help="voxcpm's torch.compile (CUDA)")
    parser.add_argument("--graph-probe", action="store_true", help="CUDA: the step's parts eager vs CUDA graph")
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
            optimize=args.optimize,
            engine="batched",
            max_batch_size=args.max_batch_size,
        )
        engine = load_engine(config)
        rows = []
        for streams in levels:
            rows.append(level(engine, streams, synchronize))
            print({key: value for key, value in rows[-1].items() if key != "prefill_ms"}, flush=True)
        probes = (
            [probe for streams in dict.fromkeys(levels) for probe in graph_probe(engine, streams)]
            if args.graph_probe
            else []
        )
        syncs = [sync_census(engine, streams) for streams in dict.fromkeys(levels)] if args.sync_census else []
        engine.close()
    name = args.name or f"step_phases_{args.preset}_{args.device.split(':')[0]}"
    payload = {"arguments": vars(args), "levels": rows, "graph_probe": probes, "sync_census": syncs}
    save(name, payload, report(rows, probes, syncs, args))
    plot(rows, name)


if __name__ == "__main__":
    main()
