"""The seed document's quick streaming test: time to first byte, each chunk's size, total time.

Runs against a service that is already up (``make serve``), several repetitions, and saves the
numbers under benchmarks/results/. Timings are reported as ratios within one run (TTFB / total),
since absolute times on a shared machine are noisy.

    .venv/bin/python benchmarks/quick_stream.py --url http://localhost:7861 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

SEED_SENTENCE = "你好，这是VoxCPM流式语音合成测试。"
WAV_HEADER_BYTES = 44
RESULTS = Path(__file__).resolve().parent / "results"


def one_stream(url: str, text: str, show_chunks: bool) -> dict[str, float]:
    started = time.perf_counter()
    response = requests.post(f"{url}/api/tts/stream", data={"text": text, "inference_timesteps": 5}, stream=True)
    response.raise_for_status()
    first_byte = None
    received = 0
    for chunk in response.iter_content(chunk_size=8192):
        if first_byte is None:
            first_byte = time.perf_counter() - started
        received += len(chunk)
        if show_chunks:
            print(f"  chunk {len(chunk):6d} bytes at {1e3 * (time.perf_counter() - started):8.1f} ms")
    total = time.perf_counter() - started
    sample_rate = int(response.headers["x-sample-rate"])
    audio_s = (received - WAV_HEADER_BYTES) / 2 / sample_rate
    assert first_byte is not None
    return {
        "ttfb_ms": 1e3 * first_byte,
        "total_ms": 1e3 * total,
        "ttfb_over_total": first_byte / total,
        "audio_s": audio_s,
        "rtf": total / audio_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:7861")
    parser.add_argument("--text", default=SEED_SENTENCE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    health = requests.get(f"{args.url}/health", timeout=30).json()
    one_stream(args.url, args.text, show_chunks=False)  # warm the path once
    runs = [one_stream(args.url, args.text, show_chunks=(i == 0)) for i in range(args.repeat)]
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"median of {args.repeat}: TTFB {summary['ttfb_ms']:.1f} ms, total {summary['total_ms']:.1f} ms, "
        f"TTFB/total {summary['ttfb_over_total']:.3f}, audio {summary['audio_s']:.2f} s, RTF {summary['rtf']:.3f}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "quick_stream.json"
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, CPU only",
                "model": health["models"],
                "text": args.text,
                "median": summary,
                "runs": runs,
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
