"""What replica warm-up buys the first user: first request's time to first chunk, warm-up off and on.

Each variant loads a fresh engine in a fresh process (lazy initialisation in torch and voxcpm is
per process), then times its first two requests.

    .venv/bin/python benchmarks/startup.py [--device cuda --preset voxcpm1.5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SEED_SENTENCE, save, table

from serve_app.config import ModelConfig
from serve_app.model import synthetic
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import PromptAudio, SynthesisRequest


def first_requests(checkpoint: str, device: str, warmup: bool, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    engine = ReferenceEngine.load(ModelConfig(source=checkpoint, device=device, optimize=False, warmup=warmup))
    load_s = time.perf_counter() - started
    rate = engine.info.prompt_sample_rate
    requests = [SynthesisRequest(text=SEED_SENTENCE)] * 2 + [
        SynthesisRequest(  # cloning, each with a reference the prompt cache has not seen
            text=SEED_SENTENCE,
            prompt=PromptAudio(samples=np.full(rate, 0.01 * i, dtype=np.float32), sample_rate=rate, text="参考"),
        )
        for i in (1, 2)
    ]
    firsts = []
    for request in requests:
        started = time.perf_counter()
        next(iter(engine.generate(request, streaming=True)))
        firsts.append(1e3 * (time.perf_counter() - started))
    out.put(
        {
            "warmup": warmup,
            "load_s": load_s,
            "first_ms": firsts[0],
            "second_ms": firsts[1],
            "first_cloning_ms": firsts[2],
            "second_cloning_ms": firsts[3],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    context = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(synthetic.build(args.preset, Path(tmp) / args.preset))
        for warmup in (False, True):
            out = context.Queue()
            process = context.Process(target=first_requests, args=(checkpoint, args.device, warmup, out))
            process.start()
            rows.append(out.get(timeout=600))
            process.join()
    columns = ("first_ms", "second_ms", "first_cloning_ms", "second_cloning_ms")
    markdown = f"# Start-up: replica warm-up\n\n{args.preset} on {args.device}, a fresh process per row.\n\n" + table(
        ["warm-up", "load s", "first chunk ms: 1st request", "2nd request", "1st cloning", "2nd cloning"],
        [[r["warmup"], f"{r['load_s']:.2f}", *(f"{r[c]:.1f}" for c in columns)] for r in rows],
    )
    save("startup", {"preset": args.preset, "device": args.device, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
