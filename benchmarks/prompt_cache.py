"""Before/after of the per-replica prompt cache: cloning from the same reference, cache off and on.

Two ways to clone: uploading the same reference.wav with every request (as the seed's client does)
and a saved voice used by id. Without the cache each request re-encodes the reference (file write,
decode, VAE encoder) before the first chunk; with it, a replica encodes each voice once.

    .venv/bin/python benchmarks/prompt_cache.py --repeat 10
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import requests
from common import SEED_SENTENCE, local_service, reference_wav, save, summary, table, time_request


def save_voice(url: str, reference: Path, text: str) -> str:
    with reference.open("rb") as audio:
        response = requests.post(f"{url}/api/voices", data={"name": "bench", "text": text}, files={"audio": audio})
    response.raise_for_status()
    return response.json()["voice_id"]


VARIANTS = {"cache off (prompt_cache_size: 0)": 0, "cache on (prompt_cache_size: 32)": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    form = {"text": SEED_SENTENCE, "prompt_text": "参考音频的文本", "inference_timesteps": 5}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_wav(Path(tmp) / "reference.wav")
        for name, size in VARIANTS.items():
            with local_service(prompt_cache_size=size) as url:
                time_request(url, "/api/tts/stream", {"text": SEED_SENTENCE})  # warm the path, not the prompt
                uploads = [time_request(url, "/api/tts/stream", form, reference) for _ in range(args.repeat)]
                voice_id = save_voice(url, reference, form["prompt_text"])
                by_id = {"text": SEED_SENTENCE, "voice_id": voice_id, "inference_timesteps": 5}
                saved = [time_request(url, "/api/tts/stream", by_id) for _ in range(args.repeat)]
            for way, runs in (("same upload every time", uploads), ("saved voice by id", saved)):
                results[f"{name}, {way}"] = {
                    "ttfb_ms": summary([1e3 * t.ttfb_s for t in runs]),
                    "total_ms": summary([1e3 * t.total_s for t in runs]),
                }
    rows = [
        [name, f"{r['ttfb_ms']['median']:.1f}", f"{r['ttfb_ms']['p95']:.1f}", f"{r['total_ms']['median']:.0f}"]
        for name, r in results.items()
    ]
    markdown = (
        "# Prompt cache: cloning with the same reference\n\n"
        f"{args.repeat} requests per variant, seed sentence, a 3 s reference, tiny synthetic model on CPU.\n\n"
        + table(["variant", "TTFB ms p50", "TTFB ms p95", "total ms p50"], rows)
    )
    save("prompt_cache", {"repeat": args.repeat, "variants": results}, markdown)


if __name__ == "__main__":
    main()
