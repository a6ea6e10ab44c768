"""Where the batched engine's time goes, phase by phase, and what a CUDA graph would take off a step.

In-process, one batched engine (no Ray), N streams of the seed sentence sent at once, as batching.py sends
them. The engine's phases are timed where they run, on its loop thread, each between two device
synchronisations (so on a GPU a phase's time is its launches and its kernels, without overlap with the
next): the packed prefill of the requests that join, and per step the diffusion, the two LM steps, the
rest of the step runner (feature encoder, stop head, projections), the VAE decode of the new patches and
the hand-over of the chunks. The instrumentation wraps the engine's methods in this process only.

``--graph-probe`` (CUDA): one base-LM step for N rows run eagerly and replayed from a captured CUDA graph,
both timed with device events, and whether the graph gives the same bits: whether a step is bound by
kernel launches (the graph is much faster) or by the kernels themselves.

    PYTHONPATH=. python benchmarks/step_phases.py --device cuda --preset voxcpm1.5 --levels 1,64 --graph-probe
    .venv/bin/python benchmarks/step_phases.py --levels 1,8                          # CPU, tiny model
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import SEED_SENTENCE, png, save, synthetic_checkpoint, table

from serve_app.config import ModelConfig
from serve_app.model.batched import engine as batched_engine
from serve_app.model.batched import step_runner
from serve_app.model.engine import load_engine
from serve_app.model.types import SynthesisRequest

# (class, method, phase name); the LM step is named by the model it runs (base or residual)
PHASES: tuple[tuple[Any, str, str], ...] = (
    (step_runner.StepRunner, "prefill", "prefill"),
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
    request = SynthesisRequest(text=SEED_SENTENCE, inference_timesteps=5, retry_badcase=False)

    async def one() -> None:
        async for _ in engine.stream(request, lambda: None):
            pass

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(streams)))

    with PhaseClock(synchronize) as clock:
        started = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - started
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
    }


def graph_probe(engine: Any, rows: int) -> dict[str, Any]:
    """One base-LM step for ``rows`` rows, eager against a CUDA graph's replay (device-event timing)."""
    import torch

    runner = engine._runner
    model = runner.model
    lm = model.base_lm
    dtype = next(lm.parameters()).dtype
    hidden = torch.randn(rows, lm.config.hidden_size, device=model.device, dtype=dtype)
    positions = torch.full((rows,), 100, device=model.device)
    span = step_runner.ATTENDED_POSITIONS_STEP

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return runner._lm_step(lm, runner.base_kv, positions, span, hidden)

    def timed(work: Callable[[], Any], repeat: int = 30) -> float:
        times = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    eager_out = step().clone()
    eager_ms = timed(step)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    return {
        "rows": rows,
        "eager_ms": eager_ms,
        "graph_ms": timed(graph.replay),
        "same_bits": bool(torch.equal(captured, eager_out)),
    }


def report(rows: list[dict[str, Any]], probes: list[dict[str, Any]], args: argparse.Namespace) -> str:
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
                " / ".join(f"{ms:.0f}" for ms in row["prefill_ms"]),
            ]
        )
    text = (
        "# Where the batched engine's time goes\n\n"
        f"{args.preset} ({args.dtype or 'preset dtype'}) on {args.device}, seed sentence, inference_timesteps 5; "
        "N streams sent at once; each phase timed between two device synchronisations on the engine's thread "
        "(ms, means per step; 'rest of step': the feature encoder, stop head, projections and the chunks' hand-over; "
        "'prefill': each packed prefill of the requests that joined together).\n\n"
        + table(
            [
                "streams",
                "steps",
                "step ms",
                *STEP_PARTS,
                "rest of step",
                "prefill ms per join",
            ],
            lines,
        )
    )
    if probes:
        text += "\nOne base-LM step, eager vs replayed from a CUDA graph (device events, median of 30):\n\n" + table(
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
    parser.add_argument("--graph-probe", action="store_true", help="CUDA: eager vs CUDA-graph base-LM step")
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
        probes = [graph_probe(engine, streams) for streams in levels] if args.graph_probe else []
        engine.close()
    name = args.name or f"step_phases_{args.preset}_{args.device.split(':')[0]}"
    save(name, {"arguments": vars(args), "levels": rows, "graph_probe": probes}, report(rows, probes, args))
    plot(rows, name)


if __name__ == "__main__":
    main()
