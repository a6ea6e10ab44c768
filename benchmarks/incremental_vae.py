"""What incremental VAE decoding costs and which reference it matches, in-process (no Ray).

For each preset, the same utterance (same seed) three ways: voxcpm's own streaming (VoxCPM 1.x
re-decodes a window of the last three patches at every step; VoxCPM2 decodes the new patch with its
own stateful decoder), our streaming (the new patch only, causal-conv state carried: ``vae.py``), and
voxcpm's non-streaming path (one decode of the whole utterance). Reports wall time per audio second
(interleaved repetitions, medians) and the largest sample difference of each streaming decode from the
whole-utterance decode.

    .venv/bin/python benchmarks/incremental_vae.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SEED_SENTENCE, save, synthetic_checkpoint, table

from serve_app.config import ModelConfig
from serve_app.model.engine import joined
from serve_app.model.reference import ReferenceEngine
from serve_app.model.types import SynthesisRequest

PRESETS = ("tiny-voxcpm1.5", "tiny-voxcpm2")


def voxcpm_streaming(engine: ReferenceEngine, text: str, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    generation = engine.runtime.model._generate_with_prompt_cache(
        target_text=text, prompt_cache=None, inference_timesteps=5, cfg_value=2.0, max_len=4096, streaming=True
    )
    return joined(chunk.squeeze(0).numpy() for chunk, _, _ in generation)


def ours(engine: ReferenceEngine, text: str, seed: int, streaming: bool) -> np.ndarray:
    request = SynthesisRequest(text=text, seed=seed, retry_badcase=False)
    return joined(engine.generate(request, streaming=streaming))


def measure(preset: str, repeat: int, directory: Path) -> dict[str, Any]:
    checkpoint = synthetic_checkpoint(preset, directory / preset)
    engine = ReferenceEngine.load(ModelConfig(source=str(checkpoint), device="cpu", optimize=False, warmup=True))
    ways = {
        "voxcpm streaming": lambda: voxcpm_streaming(engine, SEED_SENTENCE, 7),
        "incremental streaming": lambda: ours(engine, SEED_SENTENCE, 7, streaming=True),
        "whole (non-streaming)": lambda: ours(engine, SEED_SENTENCE, 7, streaming=False),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    audio: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        for name, way in ways.items():
            started = time.perf_counter()
            audio[name] = engine._executor.submit(way).result()  # on the engine's thread (model_thread.py)
            times[name].append(time.perf_counter() - started)
    engine.close()
    whole = audio["whole (non-streaming)"]
    seconds = len(whole) / engine.info.sample_rate
    return {
        "preset": preset,
        "audio_s": seconds,
        "wall_s_per_audio_s": {name: statistics.median(values) / seconds for name, values in times.items()},
        "max_abs_difference_from_whole": {
            name: float(np.abs(samples[: len(whole)] - whole).max()) for name, samples in audio.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(preset, args.repeat, Path(tmp)) for preset in PRESETS]
    rows = []
    for result in results:
        cost, difference = result["wall_s_per_audio_s"], result["max_abs_difference_from_whole"]
        whole = cost["whole (non-streaming)"]
        for name in cost:
            rows.append(
                [result["preset"], name, f"{cost[name]:.3f}", f"x{cost[name] / whole:.2f}", f"{difference[name]:.1e}"]
            )
    markdown = (
        "# Incremental VAE decoding (in-process, tiny synthetic models, CPU)\n\n"
        f"The seed sentence, same seed each way, {args.repeat} interleaved repetitions (medians).\n\n"
        + table(["preset", "decode", "wall s per audio s", "vs whole", "max |difference| from whole"], rows)
    )
    save("incremental_vae", {"repeat": args.repeat, "results": results}, markdown)


if __name__ == "__main__":
    main()
