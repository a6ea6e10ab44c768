"""Why each engine does all its torch work on one thread: the cost of a second thread running torch.

PyTorch's CPU kernels run on OpenMP, whose worker pool belongs to the calling thread. Each case runs in
a fresh process: ``one thread`` touches torch only on the engine's thread (as a served replica does
now); ``main thread too`` first runs one matrix product on the main thread (as the batched engine did
when it loaded the model on its caller's thread), which leaves a second pool behind. Measured in both:
a small matrix product (the size of a tiny model's projections) on a new thread, and one stream of the
seed sentence through the batched engine on the tiny model.

    .venv/bin/python benchmarks/model_thread.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import SEED_SENTENCE, png, save, synthetic_checkpoint, table

CASES = ("one thread", "main thread too")


def _gemm_us_on_a_new_thread() -> float:
    import torch

    a, b, result = torch.randn(21, 64), torch.randn(64, 256), []

    def timed() -> None:
        torch.mm(a, b)
        started = time.perf_counter()
        for _ in range(2000):
            torch.mm(a, b)
        result.append((time.perf_counter() - started) / 2000 * 1e6)

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join()
    return result[0]


def _one_stream(checkpoint: Path) -> dict[str, float]:
    from serve_app.config import ModelConfig
    from serve_app.model.engine_factory import load_engine
    from serve_app.model.types import SynthesisRequest

    engine = load_engine(ModelConfig(source=str(checkpoint), device="cpu", optimize=False, engine="batched"))
    request = SynthesisRequest(text=SEED_SENTENCE, inference_timesteps=5, retry_badcase=False)

    async def stream() -> dict[str, float]:
        started, first, samples = time.perf_counter(), 0.0, 0
        async for chunk in engine.stream(request, lambda: None):
            first = first or time.perf_counter() - started
            samples += len(chunk)
        wall = time.perf_counter() - started
        return {"ttfa_ms": first * 1000, "audio_s_per_wall_s": samples / engine.info.sample_rate / wall}

    try:
        return asyncio.run(stream())
    finally:
        engine.close()


def measure(case: str) -> dict[str, Any]:
    """One case, in this (fresh) process."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = synthetic_checkpoint("tiny-voxcpm1.5", Path(tmp) / "tiny")
        if case == "main thread too":
            torch.randn(512, 512) @ torch.randn(512, 512)  # a parallel region on the main thread
        return {"case": case, "gemm_us": _gemm_us_on_a_new_thread(), **_one_stream(checkpoint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case, alternating")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # a child process's one case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case)))
        return
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for _ in range(args.runs):
        for case in CASES:
            child = subprocess.run(
                [sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True
            )
            runs[case].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(runs[case][-1], flush=True)
    medians = {
        case: {
            key: statistics.median(run[key] for run in found) for key in ("gemm_us", "ttfa_ms", "audio_s_per_wall_s")
        }
        for case, found in runs.items()
    }
    rows = [
        [case, f"{m['gemm_us']:.1f}", f"{m['ttfa_ms']:.1f}", f"{m['audio_s_per_wall_s']:.2f}"]
        for case, m in medians.items()
    ]
    markdown = (
        "# Torch on one thread or two (CPU)\n\n"
        f"Medians of {args.runs} fresh processes per case. tiny-voxcpm1.5, batched engine, one stream of the "
        "seed sentence; GEMM: (21 x 64) @ (64 x 256) on a new thread.\n\n"
        + table(["case", "small GEMM us", "TTFA ms", "audio s per wall s"], rows)
    )
    save("model_thread", {"runs": runs, "medians": medians}, markdown)
    plot(medians)


def plot(medians: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for axis, key, title in zip(
        axes,
        ("gemm_us", "ttfa_ms", "audio_s_per_wall_s"),
        ("small GEMM (us)", "time to first audio (ms)", "audio s per wall s"),
        strict=True,
    ):
        axis.bar(list(medians), [medians[case][key] for case in medians], color=["tab:green", "tab:red"])
        axis.set_title(title)
    png(figure, "model_thread")


if __name__ == "__main__":
    main()
