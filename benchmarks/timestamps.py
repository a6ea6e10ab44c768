"""What word timestamps cost: WebSocket first audio with and without them, and the aligner's time per second of audio.

1. An LLM's answer replayed token by token on ``/api/tts/ws`` (``ws_latency.py``'s replay), interleaved: without
   timestamps, with ``timestamps: "word"`` (estimated: no aligner), and, with ``--aligner``, on a service that
   has one. Reported: first audio after a sentence's last token, and how long the last frame of a segment waits
   for its timestamps (from the ``timestamps`` message back to the frame before it).
2. The aligner alone on this CPU: a wav2vec2-base-sized CTC model (95 M parameters, random weights built from
   its config: no checkpoint can be downloaded here; the time does not depend on the weights) aligning 2, 5 and
   10 s of audio.

    .venv/bin/python benchmarks/timestamps.py --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import local_service, save, summary, table
from ws_latency import TEXTS, replay

LETTERS = "abcdefghijklmnopqrstuvwxyz'"  # an English character model's vocabulary
MODES = {"none": {}, "word": {"timestamps": "word"}}


def held_ms(events: list[tuple[float, dict]]) -> list[float]:
    """Per segment: from its ``timestamps`` message to the previous frame (what its last frame waited)."""
    waits, last_frame = [], None
    for at, event in events:
        if event["type"] == "audio":
            last_frame = at
        elif event["type"] == "timestamps" and last_frame is not None:
            waits.append(1e3 * (at - last_frame))
    return waits


def measure_socket(base: str, repeat: int, tokens_per_s: float) -> dict[str, Any]:
    url = base.replace("http", "ws", 1) + "/api/tts/ws"
    asyncio.run(replay(url, "热身。", tokens_per_s, timestamps="word"))
    found: dict[str, dict[str, list[float]]] = {m: {"first": [], "held": []} for m in MODES}
    for _ in range(repeat):
        for text in TEXTS.values():
            for mode, init in MODES.items():
                run = asyncio.run(replay(url, text, tokens_per_s, **init))
                found[mode]["first"].append(1e3 * run.first_audio_after_sentence_s())
                found[mode]["held"].extend(held_ms(run.events))
    return {
        mode: {"first_audio_ms": summary(v["first"]), "segment_end_wait_ms": summary(v["held"]) if v["held"] else None}
        for mode, v in found.items()
    }


def measure_aligner(repeat: int) -> list[dict[str, Any]]:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from serve_app.timing.aligner import Aligner

    with tempfile.TemporaryDirectory() as directory:
        vocabulary = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: 3 + i for i, c in enumerate(LETTERS)}}
        (Path(directory) / "vocab.json").write_text(json.dumps(vocabulary))
        tokenizer = Wav2Vec2CTCTokenizer(str(Path(directory) / "vocab.json"))
        model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(vocabulary), pad_token_id=0))  # base: 95 M parameters
        aligner = Aligner(model, tokenizer, Wav2Vec2FeatureExtractor(sampling_rate=16000))
        parameters = sum(p.numel() for p in model.parameters())
        text = "hello there my friend how are you doing on this fine day " * 4
        rows = []
        for seconds in (2, 5, 10):
            audio = np.random.default_rng(0).standard_normal(44100 * seconds).astype(np.float32) * 0.1
            aligner.align_now(text[: 12 * seconds], audio, 44100)  # warm
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                aligner.align_now(text[: 12 * seconds], audio, 44100)
                times.append(time.perf_counter() - started)
            rows.append({"audio_s": seconds, "parameters": parameters, "align_s": statistics.median(times)})
            print(rows[-1], flush=True)
        aligner.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    args = parser.parse_args()
    with local_service() as base:
        socket = measure_socket(base, args.repeat, args.tokens_per_s)
    aligner = measure_aligner(args.repeat)
    payload = {"repeat": args.repeat, "socket": socket, "aligner": aligner}
    save("timestamps", payload, report(payload))


def report(payload: dict[str, Any]) -> str:
    socket = payload["socket"]
    rows = [
        [
            mode,
            f"{r['first_audio_ms']['median']:.0f} / {r['first_audio_ms']['p90']:.0f}",
            "–" if r["segment_end_wait_ms"] is None else f"{r['segment_end_wait_ms']['median']:.1f}",
        ]
        for mode, r in socket.items()
    ]
    aligner = [
        [r["audio_s"], f"{r['align_s'] * 1e3:.0f}", f"{r['align_s'] / r['audio_s']:.3f}"] for r in payload["aligner"]
    ]
    return (
        "# Word timestamps: what they cost (benchmarks/timestamps.py)\n\n"
        f"WebSocket, an LLM's answer at 20 tokens/s in Chinese and English, {payload['repeat']} interleaved rounds "
        "(configs/local.yaml's graph, tiny model, no aligner: times estimated):\n\n"
        + table(
            ["timestamps", "first audio after a sentence's last token, ms p50 / p90", "last frame waits, ms p50"], rows
        )
        + "\nThe aligner on this CPU (a wav2vec2-base-sized CTC model, random weights):\n\n"
        + table(["audio s", "align ms", "seconds per second of audio"], aligner)
    )


if __name__ == "__main__":
    main()
