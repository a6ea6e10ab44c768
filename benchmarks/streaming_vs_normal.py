"""The seed's comparison, reproduced: normal (/api/tts) against streaming (/api/tts/stream).

Default synthesis and voice cloning; the seed's test sentence and a long paragraph in Chinese and
in English; time to first byte, total time, audio duration, real-time factor and the TTFB gain.
Both APIs do the same work: /api/tts runs with retry_badcase=false (the synthetic model would
otherwise be regenerated as a "bad case"; see the README).

    .venv/bin/python benchmarks/streaming_vs_normal.py --repeat 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (
    LONG_CHINESE,
    LONG_ENGLISH,
    SEED_SENTENCE,
    StreamTiming,
    local_service,
    png,
    reference_wav,
    save,
    summary,
    table,
    time_request,
)

TEXTS = {"seed sentence": SEED_SENTENCE, "long zh": LONG_CHINESE, "long en": LONG_ENGLISH}
APIS = {"normal": "/api/tts", "streaming": "/api/tts/stream"}


def run(url: str, repeat: int, reference: Path) -> list[dict]:
    rows = []
    for mode in ("default", "cloning"):
        for text_name, text in TEXTS.items():
            data = {"text": text, "inference_timesteps": 5}
            if mode == "cloning":
                data["prompt_text"] = "参考音频的文本"
            timings: dict[str, list[StreamTiming]] = {api: [] for api in APIS}
            for _ in range(repeat):  # interleaved, so drift hits both APIs alike
                for api, path in APIS.items():
                    form = {**data, "retry_badcase": "false"} if api == "normal" else data
                    timings[api].append(time_request(url, path, form, reference if mode == "cloning" else None))
            for api, runs in timings.items():
                rows.append(
                    {
                        "mode": mode,
                        "text": text_name,
                        "api": api,
                        "ttfb_ms": summary([1e3 * t.ttfb_s for t in runs]),
                        "total_ms": summary([1e3 * t.total_s for t in runs]),
                        "audio_s": summary([t.audio_s for t in runs]),
                        "rtf": summary([t.rtf for t in runs]),
                    }
                )
    return rows


def report(rows: list[dict]) -> str:
    lines = []
    by_case: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault((row["mode"], row["text"]), {})[row["api"]] = row
    for (mode, text), apis in by_case.items():
        normal, stream = apis["normal"], apis["streaming"]
        gain = 100 * (1 - stream["ttfb_ms"]["median"] / normal["ttfb_ms"]["median"])
        lines.append(
            [
                mode,
                text,
                f"{normal['ttfb_ms']['median']:.0f} ({normal['ttfb_ms']['min']:.0f}-{normal['ttfb_ms']['max']:.0f})",
                f"{stream['ttfb_ms']['median']:.0f} ({stream['ttfb_ms']['min']:.0f}-{stream['ttfb_ms']['max']:.0f})",
                f"{gain:.1f} %",
                f"{normal['total_ms']['median']:.0f}",
                f"{stream['total_ms']['median']:.0f}",
                f"{stream['audio_s']['median']:.2f}",
                f"{stream['rtf']['median']:.3f}",
            ]
        )
    header = [
        "mode",
        "text",
        "normal TTFB ms",
        "stream TTFB ms",
        "TTFB gain",
        "normal total ms",
        "stream total ms",
        "audio s",
        "stream RTF",
    ]
    n = rows[0]["ttfb_ms"]["n"]
    return (
        "# Streaming vs normal API\n\n"
        f"Median of {n} runs (min-max in parentheses), tiny synthetic VoxCPM1.5-shaped model on CPU, "
        "full Ray Serve HTTP path on loopback.\n\n" + table(header, lines)
    )


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["default", "cloning"]
    cases = sorted({(r["mode"], r["text"]) for r in rows}, key=lambda c: (modes.index(c[0]), list(TEXTS).index(c[1])))
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.2
    for offset, (api, metric, color) in enumerate(
        [("normal", "ttfb_ms", "#d62728"), ("streaming", "ttfb_ms", "#2ca02c"), ("streaming", "total_ms", "#1f77b4")]
    ):
        values = [
            next(r for r in rows if (r["mode"], r["text"], r["api"]) == (*c, api))[metric]["median"] for c in cases
        ]
        label = f"{api} {'TTFB' if metric == 'ttfb_ms' else 'total'}"
        axis.bar([i + (offset - 1) * width for i in range(len(cases))], values, width, label=label, color=color)
    axis.set_xticks(range(len(cases)), [f"{m}\n{t}" for m, t in cases])
    axis.set_yscale("log")
    axis.set_ylabel("milliseconds (log)")
    axis.set_title("Normal vs streaming API: time to first byte, and streaming's total time")
    axis.legend()
    png(figure, "streaming_vs_normal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", help="a running service; default: start configs/local.yaml locally")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reference = reference_wav(Path(tmp) / "reference.wav")
        if args.url:
            rows = run(args.url, args.repeat, reference)
        else:
            with local_service() as url:
                rows = run(url, args.repeat, reference)
    save("streaming_vs_normal", {"rows": rows}, report(rows))
    plot(rows)


if __name__ == "__main__":
    main()
