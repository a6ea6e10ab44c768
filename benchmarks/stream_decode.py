"""What a stream costs against the same audio unstreamed, with its patches decoded one per VAE call or a few
at a time (``decode_patches``, ``serve_app/model/decode_grouping.py``), in-process (no Ray).

For each tiny preset and engine (the batched engine, as every config runs it, and the reference engine),
with ``decode_patches`` 1 (a VAE call per patch) and 16 (the default): the same request (same seed) streamed
and unstreamed, interleaved repetitions, medians. Reports time to first audio, the stream's total time
against the unstreamed one's, and the largest sample difference of the grouped stream from the
patch-by-patch one.

    .venv/bin/python benchmarks/stream_decode.py --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import LONG_ENGLISH, SEED_SENTENCE, save, synthetic_checkpoint, table

from serve_app.config import ModelConfig
from serve_app.model.engine import joined
from serve_app.model.engine_factory import load_engine
from serve_app.model.types import SynthesisRequest

PRESETS = ("tiny-voxcpm1.5", "tiny-voxcpm2")
ENGINES = ("batched", "voxcpm")
GROUPINGS = (1, 16)
TEXTS = {"seed sentence": SEED_SENTENCE, "long English": LONG_ENGLISH}


async def unstreamed(engine: Any, request: SynthesisRequest) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    pieces = [piece async for piece in engine.sentences(request, lambda: None)]
    return time.perf_counter() - started, joined(pieces)


async def streamed(engine: Any, request: SynthesisRequest) -> tuple[float, float, np.ndarray]:
    pieces: list[np.ndarray] = []
    started = time.perf_counter()
    first = 0.0
    async for piece in engine.stream(request, lambda: None):
        first = first or time.perf_counter() - started
        pieces.append(piece)
    return first, time.perf_counter() - started, joined(pieces)


def measure(preset: str, kind: str, repeat: int, directory: Path) -> list[dict[str, Any]]:
    checkpoint = synthetic_checkpoint(preset, directory / preset)
    engines = {
        patches: load_engine(
            ModelConfig(
                source=str(checkpoint),
                device="cpu",
                optimize=False,
                engine=kind,
                max_batch_size=8,
                decode_patches=patches,
            )
        )
        for patches in GROUPINGS
    }
    rows = []
    try:
        for label, text in TEXTS.items():
            request = SynthesisRequest(text=text, seed=7, retry_badcase=False)
            times: dict[int, dict[str, list[float]]] = {p: {"first": [], "stream": [], "whole": []} for p in GROUPINGS}
            audio: dict[int, np.ndarray] = {}
            for _ in range(repeat):
                for patches, engine in engines.items():
                    first, total, audio[patches] = asyncio.run(streamed(engine, request))
                    whole, _ = asyncio.run(unstreamed(engine, request))
                    times[patches]["first"].append(first)
                    times[patches]["stream"].append(total)
                    times[patches]["whole"].append(whole)
            seconds = len(audio[1]) / engines[1].info.sample_rate
            for patches in GROUPINGS:
                median = {name: statistics.median(values) for name, values in times[patches].items()}
                rows.append(
                    {
                        "preset": preset,
                        "engine": kind,
                        "text": label,
                        "decode_patches": patches,
                        "audio_s": seconds,
                        "first_audio_ms": 1e3 * median["first"],
                        "stream_s": median["stream"],
                        "unstreamed_s": median["whole"],
                        "stream_vs_unstreamed": median["stream"] / median["whole"],
                        "max_abs_difference_from_patch_by_patch": float(np.abs(audio[patches] - audio[1]).max()),
                    }
                )
                print(rows[-1], flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    return rows


def report(rows: list[dict[str, Any]], repeat: int) -> str:
    """Before (a VAE call per streamed patch, 16 per call unstreamed) against after (both the default rule)."""
    lines = []
    for alone, grouped in zip(rows[::2], rows[1::2], strict=True):
        unstreamed = grouped["unstreamed_s"]
        lines.append(
            [
                grouped["preset"],
                grouped["engine"],
                grouped["text"],
                f"{grouped['audio_s']:.1f}",
                f"{alone['first_audio_ms']:.1f} / {grouped['first_audio_ms']:.1f}",
                f"{unstreamed:.3f}",
                f"{alone['stream_s']:.3f} (x{alone['stream_s'] / unstreamed:.2f})",
                f"{grouped['stream_s']:.3f} (x{grouped['stream_vs_unstreamed']:.2f})",
                f"{grouped['max_abs_difference_from_patch_by_patch']:.1e}",
            ]
        )
    header = [
        "preset",
        "engine",
        "text",
        "audio s",
        "first audio ms, 1 / 16",
        "unstreamed s",
        "stream s, a call per patch",
        "stream s, grouped (default)",
        "max |difference|",
    ]
    return (
        "# A stream against the same audio unstreamed (benchmarks/stream_decode.py)\n\n"
        f"In-process, the same request (seed 7) streamed and unstreamed, {repeat} interleaved repetitions, "
        "medians. Unstreamed: 16 patches per VAE call, as before. Stream: a VAE call per patch "
        "(`decode_patches: 1`, as before) or grouped (`decode_patches: 16`, the default); in brackets the "
        "stream's total against the unstreamed one's. First audio with 1 and with 16. The difference: the "
        "grouped stream's samples against the patch-by-patch stream's.\n\n" + table(header, lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for preset in PRESETS for kind in ENGINES for row in measure(preset, kind, args.repeat, Path(tmp))]
    save("stream_decode", {"arguments": vars(args), "rows": rows}, report(rows, args.repeat))


if __name__ == "__main__":
    main()
