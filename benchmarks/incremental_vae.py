"""What incremental VAE decoding costs and which reference it matches, in-process (no Ray).

For each preset, the same utterance (same seed) three ways: voxcpm's own streaming (VoxCPM 1.x
re-decodes a window of the last three patches at every step; VoxCPM2 decodes the new patch with its
own stateful decoder), our streaming (the new patch only, causal-conv state carried: ``vae.py``), and
voxcpm's non-streaming path (one decode of the whole utterance). Reports wall time per audio second
(interleaved repetitions, medians) and the largest sample difference of each streaming decode from the
whole-utterance decode. On the tiny models one patch's decode is dozens of tiny convolutions whose fixed
cost per call dominates, so the second table decodes the same way with the full-size VAEs alone (random
weights, the releases' dimensions, 64 patches of random latents): the VAE's own work per patch, which is
what voxcpm's window of three patches triples.

    .venv/bin/python benchmarks/incremental_vae.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SEED_SENTENCE, save, synthetic_checkpoint, table

from serve_app.config import ModelConfig
from serve_app.model import synthetic
from serve_app.model.engine import joined
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import SynthesisRequest
from serve_app.model.vae import StreamingVAEDecoder, fuse_weight_norm

PRESETS = ("tiny-voxcpm1.5", "tiny-voxcpm2")
FULL_SIZE = ("voxcpm-0.5b", "voxcpm1.5", "voxcpm2")


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


def full_size_vae(preset: str, repeat: int, patches: int = 64) -> dict[str, Any]:
    """ms of VAE work per patch for a full-size release's VAE: the whole signal at once, voxcpm 1.x's window
    (the last three patches decoded at every step) and our incremental decode (the new patch only)."""
    vae = synthetic.audio_vae(preset)
    fuse_weight_norm(vae)
    patch_size = synthetic.PRESETS[preset].patch_size
    latents = torch.randn(1, vae.latent_dim, patches * patch_size) * 0.5
    decoder = StreamingVAEDecoder(vae, 1)
    window = 3 * patch_size

    def windowed() -> None:
        for end in range(patch_size, latents.shape[-1] + 1, patch_size):
            vae.decode(latents[..., max(0, end - window) : end])

    def incremental() -> None:
        decoder.reset([0])
        for start in range(0, latents.shape[-1], patch_size):
            decoder.decode(latents[..., start : start + patch_size], [0])

    ways = {"whole": lambda: vae.decode(latents), "voxcpm window": windowed, "incremental": incremental}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with torch.inference_mode():
        for _ in range(repeat):
            for name, way in ways.items():
                started = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - started)
    per_patch = {name: statistics.median(values) / patches * 1000 for name, values in times.items()}
    return {"preset": preset, "ms_per_patch": per_patch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(preset, args.repeat, Path(tmp)) for preset in PRESETS]
    with ThreadPoolExecutor(max_workers=1) as thread:  # torch on one thread only (model_thread.py)
        full_size = [thread.submit(full_size_vae, preset, args.repeat).result() for preset in FULL_SIZE]
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
        + "\nThe full-size VAEs alone (random weights, 64 patches, VAE work per patch):\n\n"
        + table(
            ["release", "whole ms/patch", "voxcpm window ms/patch", "incremental ms/patch", "incremental vs window"],
            [
                [
                    result["preset"],
                    *(f"{result['ms_per_patch'][way]:.2f}" for way in ("whole", "voxcpm window", "incremental")),
                    f"x{result['ms_per_patch']['incremental'] / result['ms_per_patch']['voxcpm window']:.2f}",
                ]
                for result in full_size
            ],
        )
    )
    save("incremental_vae", {"repeat": args.repeat, "results": results, "full_size_vae": full_size}, markdown)


if __name__ == "__main__":
    main()
