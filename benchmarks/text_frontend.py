"""What the text front-end costs per 1,000 characters, on one CPU core, before any audio: the sentence splitter
alone (plain text), an SSML document read into spans (``text/ssml.py``: breaks, aliases, ``say-as``, voices),
and three pronunciation lexicons of 1,000 entries each applied (``text/lexicons.py``). Goal: under 5 ms for
1,000 characters with SSML and the three lexicons. voxcpm's own normalizer (wetext, only when a request
asks ``normalize``) is measured apart: it is the library's cost, not the front-end's.

    .venv/bin/python benchmarks/text_frontend.py --repeat 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from common import png, save, table

from serve_app.config.access import SSMLConfig
from serve_app.text.lexicons import Entry, Lexicon, Rewriter
from serve_app.text.sentences import split_sentences
from serve_app.text.ssml import parse

PLAIN = (
    "The W3C met in New York on March 5. Its chair, Dr. Lee, opened at 9:30 am. "
    "语音合成技术正在改变人们获取信息的方式，重庆的会议也在今天开始。"
)
SSML_PIECE = (
    'The <sub alias="World Wide Web Consortium">W3C</sub> met in New York on '
    '<say-as interpret-as="date" format="md">3/5</say-as>.<break time="300ms"/>'
    '<voice name="narrator">Its chair opened at <say-as interpret-as="time">9:30 am</say-as>.</voice> '
    "语音合成技术正在改变人们获取信息的方式，重庆的会议也在今天开始。"
)


def per_thousand(work: Callable[[], object], characters: int, repeat: int) -> float:
    """Median milliseconds of ``work`` per 1,000 characters of its text."""
    work()  # warm: imports, caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000 * 1000 / characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--entries", type=int, default=1000, help="per lexicon (three lexicons)")
    args = parser.parse_args()

    plain = PLAIN * (1000 // len(PLAIN) + 1)
    document = "<speak>" + SSML_PIECE * (1000 // len(SSML_PIECE) + 1) + "</speak>"
    lexicons = [
        Lexicon(tuple(Entry(f"brand{n}x{i}", f"alias {n} {i}") for i in range(args.entries - 2))) for n in range(3)
    ]
    lexicons[0] = Lexicon((*lexicons[0].entries, Entry("New York", "the Big Apple"), Entry("重庆", "{chong2}{qing4}")))
    rewrite = Rewriter(lexicons)
    limits = SSMLConfig(max_chars=100_000, max_voices=100)

    def ssml_and_lexicons() -> None:
        for span in parse(document, limits, rewrite=rewrite).spans:
            split_sentences(span.text)

    from voxcpm.utils.text_normalize import TextNormalizer

    normalizer = TextNormalizer()
    sentences = split_sentences(plain)
    rows = {
        "plain text: sentences split": per_thousand(lambda: split_sentences(plain), len(plain), args.repeat),
        "three lexicons applied to plain text": per_thousand(
            lambda: split_sentences(rewrite(plain)), len(plain), args.repeat
        ),
        "SSML read into spans": per_thousand(lambda: parse(document, limits), len(document), args.repeat),
        "SSML and three lexicons": per_thousand(ssml_and_lexicons, len(document), args.repeat),
        "voxcpm's normalizer (wetext), apart": per_thousand(
            lambda: [normalizer.normalize(s) for s in sentences], len(plain), max(3, args.repeat // 50)
        ),
    }
    entries = f"{args.entries:,}"
    markdown = (
        f"The text front-end per 1,000 characters (medians of {args.repeat}; lexicons: three of {entries} entries):\n\n"
        + table(["step", "ms per 1,000 characters"], [(name, f"{ms:.2f}") for name, ms in rows.items()])
        + f"\nGoal: SSML and three lexicons under 5 ms: {rows['SSML and three lexicons']:.2f} ms.\n"
    )
    save("text_frontend", {"repeat": args.repeat, "entries": args.entries, "ms_per_1000_chars": rows}, markdown)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3))
    axes.barh(list(rows), list(rows.values()))
    axes.set_xscale("log")
    axes.set_xlabel("ms per 1,000 characters (log)")
    axes.invert_yaxis()
    png(figure, "text_frontend")


if __name__ == "__main__":
    main()
