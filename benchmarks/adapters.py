"""What LoRA adapters cost the batched engine: many streams each with its own adapter against the same streams
on the base model, the memory one resident adapter takes, and what loading one on demand costs.

In-process (the engine the model deployment drives, no Ray), on a tiny synthetic preset with random synthetic
adapters of its LoRA shape (rank 32, LMs and DiT; non-zero ``lora_B``). For each burst size: ``--repeat``
interleaved bursts of N streams sent at once, every stream the base model, or each its own adapter (all
resident), then the audio seconds per wall second and first audio. Loading on demand: a request whose adapter
is not resident, against one whose adapter is (first audio), and the file read and check alone. Memory per
resident adapter on the real models' shapes, computed from their layouts (meta device: no weights).

    .venv/bin/python benchmarks/adapters.py --streams 8 32 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from common import SEED_SENTENCE, StreamTiming, png, save, summary, synthetic_checkpoint, table, timed_stream

from serve_app.config import LoRAShape, ModelConfig
from serve_app.model import synthetic
from serve_app.model.adapters import layout, lora_config, read_weights
from serve_app.model.engine_factory import load_engine
from serve_app.model.types import SynthesisRequest
from serve_app.store.adapter_store import Adapter


def random_adapter_file(expected: dict, seed: int, path: Path) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in sorted(expected.items())}
    safetensors.torch.save_file(tensors, str(path))
    return path


def record(path: Path, model: str, index: int) -> Adapter:
    shape = LoRAShape().model_dump()
    name = f"adapter-{index}"
    return Adapter(name, name, model, **shape, file=str(path), digest=name, created=0.0, source="config")


async def burst(engine: Any, requests: list[SynthesisRequest]) -> tuple[list[StreamTiming], float]:
    started = time.perf_counter()
    timings = await asyncio.gather(*(timed_stream(engine, request) for request in requests))
    return list(timings), time.perf_counter() - started


def measure_bursts(engine: Any, adapters: list[Adapter], streams: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    runs: dict[str, list[tuple[list[StreamTiming], float]]] = {"base": [], "adapters": []}
    for attempt in range(repeat):
        for mode in runs:
            requests = [
                SynthesisRequest(
                    text=SEED_SENTENCE,
                    seed=attempt * 1000 + index,
                    retry_badcase=False,
                    adapter=adapters[index] if mode == "adapters" else None,
                )
                for index in range(streams)
            ]
            runs[mode].append(asyncio.run(burst(engine, requests)))
    for mode, results in runs.items():
        rates = [sum(t.audio_s for t in timings) / wall for timings, wall in results]
        ttfb = summary([1e3 * t.ttfb_s for timings, _ in results for t in timings])
        rows.append({"streams": streams, "mode": mode, "audio_s_per_s": statistics.median(rates), "ttfb_ms": ttfb})
        print(rows[-1], flush=True)
    return rows


def measure_loading(engine: Any, directory: Path, expected: dict, model: str, repeat: int) -> dict[str, Any]:
    """First audio of one request whose adapter is not resident against one whose is; the read and check alone."""
    cold, warm, read = [], [], []
    for attempt in range(repeat):
        adapter = record(
            random_adapter_file(expected, 10_000 + attempt, directory / f"cold-{attempt}.st"), model, 1000 + attempt
        )
        request = SynthesisRequest(text=SEED_SENTENCE, seed=attempt, retry_badcase=False, adapter=adapter)
        cold.append(asyncio.run(timed_stream(engine, request)).ttfb_s)
        warm.append(asyncio.run(timed_stream(engine, request)).ttfb_s)
        fresh = record(Path(adapter.file), model, 2000 + attempt)
        started = time.perf_counter()
        engine.runtime.adapters.get(fresh, Path(fresh.file))
        read.append(time.perf_counter() - started)
    return {
        "first_audio_not_resident_ms": 1e3 * statistics.median(cold),
        "first_audio_resident_ms": 1e3 * statistics.median(warm),
        "read_and_check_ms": 1e3 * statistics.median(read),
    }


def real_model_sizes(repeat: int) -> list[dict[str, Any]]:
    """Bytes of one adapter on the real releases' shapes (from a model built on the meta device), and how long
    a replica takes to read and check such a file (float32, as voxcpm's trainer writes it) from local disk."""
    sizes = []
    for preset in ("voxcpm1.5", "voxcpm2"):
        for rank in (32, 64):
            with tempfile.TemporaryDirectory() as directory:
                with torch.device("meta"):
                    _, model = synthetic.instantiate(preset, Path(directory))  # type: ignore[arg-type]
                    model.lora_config = lora_config(LoRAShape(r=rank))
                    model._apply_lora()
                    expected = layout(model)
                parameters = sum(torch.Size(shape).numel() for shape in expected.values())
                path = random_adapter_file(expected, 0, Path(directory) / "lora_weights.safetensors")
                reads = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    read_weights(path, expected)
                    reads.append(time.perf_counter() - started)
            sizes.append(
                {
                    "model": preset,
                    "r": rank,
                    "parameters": parameters,
                    "bfloat16_MiB": parameters * 2 / 2**20,
                    "file_MiB": path_bytes(parameters),
                    "read_and_check_ms": 1e3 * statistics.median(reads),
                }
            )
            print(sizes[-1], flush=True)
    return sizes


def path_bytes(parameters: int) -> float:
    return parameters * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-voxcpm1.5", choices=["tiny-voxcpm1.5", "tiny-voxcpm2", "voxcpm2"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="of the synthetic checkpoint (default: the preset's)")
    parser.add_argument("--name", help="of the result files (default: adapters_PRESET)")
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        checkpoint = synthetic_checkpoint(args.preset, root / args.preset, args.dtype)
        config = ModelConfig(
            name=args.preset,
            source=str(checkpoint),
            device=args.device,
            optimize=False,
            engine="batched",
            max_batch_size=max(args.streams),
            max_resident_adapters=max(args.streams) + args.repeat * 2,
        )
        engine = load_engine(config)
        try:
            expected = engine.runtime.adapters.expected
            adapters = [
                record(random_adapter_file(expected, index, root / f"{index}.st"), args.preset, index)
                for index in range(max(args.streams))
            ]
            for adapter in adapters:  # resident before the bursts: loading on demand is measured apart
                engine.runtime.adapters.get(adapter, Path(adapter.file))
            rows = [row for streams in args.streams for row in measure_bursts(engine, adapters, streams, args.repeat)]
            loading = measure_loading(engine, root, expected, args.preset, args.repeat)
            resident = engine.runtime.adapters.get(adapters[0], Path(adapters[0].file))
            resident.pairs(next(engine.runtime.model.base_lm.parameters()))
            tiny_bytes = resident.bytes
        finally:
            engine.close()
    sizes = real_model_sizes(args.repeat)
    payload = {"preset": args.preset, "device": args.device, "repeat": args.repeat, "bursts": rows, "loading": loading}
    payload |= {"tiny_adapter_bytes": tiny_bytes, "real_model_adapter_sizes": sizes}
    name = args.name or f"adapters_{args.preset}"
    save(name, payload, report(payload))
    plot(rows, args.preset, name)


def report(payload: dict[str, Any]) -> str:
    rows = payload["bursts"]
    lines = []
    for base, tuned in zip(rows[::2], rows[1::2], strict=True):
        lines.append(
            [
                base["streams"],
                f"{base['audio_s_per_s']:.2f}",
                f"{tuned['audio_s_per_s']:.2f}",
                f"x{tuned['audio_s_per_s'] / base['audio_s_per_s']:.2f}",
                f"{base['ttfb_ms']['median']:.0f} / {base['ttfb_ms']['p90']:.0f}",
                f"{tuned['ttfb_ms']['median']:.0f} / {tuned['ttfb_ms']['p90']:.0f}",
            ]
        )
    loading = payload["loading"]
    sizes = [
        [
            size["model"],
            size["r"],
            f"{size['parameters']:,}",
            f"{size['bfloat16_MiB']:.1f}",
            f"{size['file_MiB']:.1f}",
            f"{size['read_and_check_ms']:.0f}",
        ]
        for size in payload["real_model_adapter_sizes"]
    ]
    return (
        f"# LoRA adapters in the batched engine (benchmarks/adapters.py, {payload['preset']})\n\n"
        f"In-process ({payload['device']}), bursts of N streams of the seed sentence at once, "
        f"{payload['repeat']} interleaved repetitions (medians): every stream on the base model, or each with "
        "its own adapter (rank 32, LMs and DiT, all resident).\n\n"
        + table(
            [
                "streams",
                "audio s/s, base",
                "audio s/s, distinct adapters",
                "adapters / base",
                "first audio ms p50 / p90, base",
                "first audio ms p50 / p90, adapters",
            ],
            lines,
        )
        + f"\nLoading on demand: a request whose adapter is not resident starts after "
        f"{loading['first_audio_not_resident_ms']:.0f} ms, one whose adapter is after "
        f"{loading['first_audio_resident_ms']:.0f} ms; the file's read and check alone take "
        f"{loading['read_and_check_ms']:.1f} ms (tiny model: {payload['tiny_adapter_bytes'] / 2**10:.0f} KiB per "
        "adapter).\n\nOne adapter on the real releases' shapes: resident (bfloat16 on the device), its file "
        "(float32, as voxcpm's trainer writes it), and a replica's read and check of that file on this machine "
        "(what a request whose adapter is not resident waits for first, before the copy to the device):\n\n"
        + table(["model", "r", "parameters", "MiB resident", "MiB file", "read and check ms"], sizes)
    )


def plot(rows: list[dict[str, Any]], preset: str, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for mode in ("base", "adapters"):
        chosen = [row for row in rows if row["mode"] == mode]
        axis.plot([r["streams"] for r in chosen], [r["audio_s_per_s"] for r in chosen], marker="o", label=mode)
    axis.set_xlabel("streams at once")
    axis.set_ylabel("audio seconds per second")
    axis.set_title(f"Distinct adapters against the base model ({preset})")
    axis.legend()
    png(figure, name)


if __name__ == "__main__":
    main()
