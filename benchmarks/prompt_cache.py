"""Before/after of the per-replica prompt cache: cloning with the same reference, cache off and on.

The seed's cloning client uploads the same reference.wav with every request; without the cache
each request re-encodes it (file write, decode, VAE encoder) before the first chunk.

    .venv/bin/python benchmarks/prompt_cache.py --repeat 10
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SEED_SENTENCE, local_service, reference_wav, save, summary, table, time_request

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
                runs = [time_request(url, "/api/tts/stream", form, reference) for _ in range(args.repeat)]
            results[name] = {
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
