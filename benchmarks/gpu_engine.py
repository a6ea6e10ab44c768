"""The reference engine on a GPU: full-size synthetic checkpoints, in-process (batching.py: the batched one).

For a lent H100/H200 (no Ray needed: the engine is what the model replica runs; carry the voxcpm
wheel and run from the repository root with PYTHONPATH=.). Per variant
(preset x dtype x torch.compile): load time, time to first chunk p50/p95, real-time factor at
concurrency 1 and GPU memory; then K engine processes sharing the GPU (what fractional
``num_gpus`` does) and the audio seconds they produce per wall second together.

    PYTHONPATH=. python benchmarks/gpu_engine.py --presets voxcpm1.5,voxcpm2 --optimize both --share 1,2,4
    PYTHONPATH=. python benchmarks/gpu_engine.py --device cpu --presets tiny-voxcpm1.5 --repeat 3 --share 1,2  # smoke

Synthetic weights never stop on their own, so each utterance runs to voxcpm's length cap:
a known, repeatable amount of work (see serve_app/model/synthetic.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_app.config import ModelConfig
from serve_app.model import synthetic
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import SynthesisRequest

TEXT = "你好，这是VoxCPM流式语音合成测试。"
RESULTS = Path(__file__).resolve().parent / "results"


def load(checkpoint: Path, device: str, optimize: bool) -> tuple[ReferenceEngine, float]:
    started = time.perf_counter()
    engine = ReferenceEngine.load(ModelConfig(source=str(checkpoint), device=device, optimize=optimize))
    return engine, time.perf_counter() - started


def stream_once(engine: ReferenceEngine, sync: Any) -> tuple[float, float, int]:
    """(first chunk s, total s, samples), synchronizing the device before reading the clock."""
    started = time.perf_counter()
    first, samples = None, 0
    for chunk in engine.generate(SynthesisRequest(text=TEXT, inference_timesteps=5), streaming=True):
        sync()
        first = first if first is not None else time.perf_counter() - started
        samples += len(chunk)
    return first or 0.0, time.perf_counter() - started, samples


def device_tools(device: str) -> tuple[Any, Any]:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.synchronize, lambda: torch.cuda.max_memory_allocated() / 2**20
    return (lambda: None), (lambda: 0.0)


def variant(checkpoint: Path, device: str, optimize: bool, repeat: int) -> dict[str, Any]:
    sync, peak_mib = device_tools(device)
    engine, load_s = load(checkpoint, device, optimize)
    first_request = stream_once(engine, sync)
    runs = [stream_once(engine, sync) for _ in range(repeat)]
    rate = engine.info.sample_rate
    engine.close()
    firsts = sorted(1e3 * r[0] for r in runs)
    return {
        "load_s": load_s,
        "first_request_ttfb_ms": 1e3 * first_request[0],
        "ttfb_ms_p50": statistics.median(firsts),
        "ttfb_ms_p95": firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))],
        "rtf_p50": statistics.median(r[1] / (r[2] / rate) for r in runs),
        "audio_s": runs[0][2] / rate,
        "peak_memory_mib": peak_mib(),
    }


def _shared_worker(checkpoint: str, device: str, optimize: bool, repeat: int, barrier: Any, out: Any) -> None:
    sync, peak_mib = device_tools(device)
    engine, _ = load(Path(checkpoint), device, optimize)
    stream_once(engine, sync)
    barrier.wait()
    started = time.perf_counter()
    audio = sum(stream_once(engine, sync)[2] for _ in range(repeat)) / engine.info.sample_rate
    out.put({"audio_s": audio, "wall_s": time.perf_counter() - started, "peak_memory_mib": peak_mib()})


def shared(checkpoint: Path, device: str, optimize: bool, repeat: int, processes: int) -> dict[str, Any]:
    """`processes` engines on one device at once, as fractional num_gpus packs replicas."""
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_shared_worker, args=(str(checkpoint), device, optimize, repeat, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    wall = max(r["wall_s"] for r in results)
    return {
        "processes": processes,
        "audio_s_per_wall_s": sum(r["audio_s"] for r in results) / wall,
        "peak_memory_mib_per_process": max(r["peak_memory_mib"] for r in results),
    }


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="voxcpm1.5")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--optimize", choices=["on", "off", "both"], default="both")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--share", default="1,2,4", help="engines sharing the device (fractional num_gpus)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_engine.json")
    args = parser.parse_args()

    optimize = {"on": [True], "off": [False], "both": [False, True]}[args.optimize]
    rows, sharing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            for dtype in args.dtypes.split(","):
                checkpoint = synthetic.build(preset, Path(tmp) / f"{preset}-{dtype}", dtype=dtype)
                for compiled in optimize:
                    row = {
                        "preset": preset,
                        "dtype": dtype,
                        "optimize": compiled,
                        **variant(checkpoint, args.device, compiled, args.repeat),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for processes in map(int, args.share.split(",")):
                    result = {
                        "preset": preset,
                        "dtype": dtype,
                        "optimize": optimize[-1],
                        **shared(checkpoint, args.device, optimize[-1], max(2, args.repeat // 2), processes),
                    }
                    sharing.append(result)
                    print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"device": device_name(args.device), "variants": rows, "sharing": sharing}, indent=2)
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
