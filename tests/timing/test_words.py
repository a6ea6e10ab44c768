"""Words of a text and their estimated times: every word once, in order, times monotonic and within the segment."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve_app.timing.words import estimated, words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there, how are you?", ["Hello", "there,", "how", "are", "you?"]),
        ("你好，世界。", ["你", "好，", "世", "界。"]),
        ("“Quoted” text - with a dash.", ["“Quoted”", "text-", "with", "a", "dash."]),
        ("VoxCPM2 是 2025 年的模型", ["VoxCPM2", "是", "2025", "年", "的", "模", "型"]),
        ("こんにちは、世界", ["こ", "ん", "に", "ち", "は、", "世", "界"]),
        ("...", ["..."]),
        ("", []),
    ],
)
def test_words_are_what_captions_show(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_an_estimate_spreads_the_segment_by_spoken_characters() -> None:
    timed = estimated("Hi there, everyone.", 1.0, 3.0)
    assert [w.word for w in timed] == ["Hi", "there,", "everyone."]
    assert timed[0].start_s == 1.0 and timed[-1].end_s == pytest.approx(3.0)
    assert timed[1].end_s - timed[1].start_s == pytest.approx(2.0 * 5 / 15)  # "there": 5 of 15 letters


@given(st.text(max_size=200), st.floats(0, 100), st.floats(0.01, 30))
def test_every_character_once_in_order_and_times_monotonic(text: str, start: float, duration: float) -> None:
    timed = estimated(text, start, start + duration)
    assert "".join(w.word for w in timed) == "".join(text.split())
    ends = [start] + [t for w in timed for t in (w.start_s, w.end_s)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(ends))
    assert all(start - 1e-9 <= w.start_s <= w.end_s <= start + duration + 1e-9 for w in timed)
