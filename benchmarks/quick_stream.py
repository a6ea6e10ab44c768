"""The seed document's quick streaming test: time to first byte, each chunk's size, total time.

Against a running service (``make serve``); several repetitions, saved under benchmarks/results/.

    .venv/bin/python benchmarks/quick_stream.py --url http://localhost:7861 --repeat 5
"""

from __future__ import annotations

import argparse

import requests
from common import SEED_SENTENCE, save, summary, table, time_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:7861")
    parser.add_argument("--text", default=SEED_SENTENCE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    models = requests.get(f"{args.url}/health", timeout=30).json()["models"]
    form = {"text": args.text, "inference_timesteps": 5}
    time_request(args.url, "/api/tts/stream", form)  # warm the path once
    runs = [time_request(args.url, "/api/tts/stream", form) for _ in range(args.repeat)]
    for arrival, size in zip(runs[0].arrivals_s, runs[0].audio_bytes, strict=True):
        print(f"  chunk {size:6d} audio bytes at {1e3 * arrival:8.1f} ms")
    stats = {
        "ttfb_ms": summary([1e3 * r.ttfb_s for r in runs]),
        "total_ms": summary([1e3 * r.total_s for r in runs]),
        "ttfb_over_total": summary([r.ttfb_s / r.total_s for r in runs]),
        "audio_s": summary([r.audio_s for r in runs]),
        "rtf": summary([r.rtf for r in runs]),
    }
    markdown = f"# Quick streaming test\n\n{args.repeat} runs against {args.url} ({models[0]['name']}).\n\n" + table(
        ["measure", "p50", "min", "max"],
        [[name, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}"] for name, s in stats.items()],
    )
    save("quick_stream", {"url": args.url, "models": models, "text": args.text, "stats": stats}, markdown)


if __name__ == "__main__":
    main()
