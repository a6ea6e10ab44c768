"""Cutting streamed text into sentences: where speech may start while a language model still writes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from serve_app.text import stream as text_stream
from serve_app.text.stream import ABBREVIATIONS, SentenceBuffer, spoken


def fed(tokens: list[str], max_wait_s: float = 10.0) -> tuple[list[str], SentenceBuffer]:
    buffer = SentenceBuffer(max_wait_s)
    return [sentence for token in tokens for sentence in buffer.append(token)], buffer


@pytest.mark.parametrize(
    ("tokens", "sentences", "left"),
    [
        (["Hello", " world", ".", " Next"], ["Hello world."], "Next"),
        (["Hello", " world", "."], [], "Hello world."),  # a final period waits: "3." may become "3.5"
        (["Pi is 3", ".", "14", " today", ". "], ["Pi is 3.14 today."], None),
        (["Dr. Lee met Mr. Smith", " at 5 p.m. today", ". Then"], ["Dr. Lee met Mr. Smith at 5 p.m. today."], "Then"),
        (["See J. K. Rowling", ". ok"], ["See J. K. Rowling."], "ok"),
        (["Really", "?", " Yes", "!"], ["Really?", "Yes!"], None),
        (["1", ". ", "First item", ". "], ["1. First item."], None),
        (["你好", "。", "今天", "天气", "很好", "！", "”我们"], ["你好。", "今天天气很好！"], "我们"),
        (["第一；第二…", "第三？"], ["第一；", "第二…", "第三？"], None),
        (["line one\nline two"], ["line one"], "line two"),
        (['He said "stop." Then', " left."], ['He said "stop."'], "Then left."),
    ],
)
def test_sentences_are_cut_where_they_end(tokens: list[str], sentences: list[str], left: str | None) -> None:
    cut, buffer = fed(tokens)
    assert cut == sentences
    assert buffer.flush() == left


def still_writing(buffer: SentenceBuffer, wait_s: float) -> None:
    """Let ``wait_s`` pass since the first piece, with the writer still sending (an empty piece)."""
    time.sleep(wait_s)
    buffer.append("")


def test_max_wait_cuts_at_the_last_clause_mark_once_enough_is_buffered() -> None:
    cut, buffer = fed(["This is a clause, and this", " is more, and"], max_wait_s=0.2)
    assert cut == [] and buffer.overdue() is None  # not waited long enough yet
    still_writing(buffer, 0.21)
    assert buffer.overdue() == "This is a clause, and this is more,"
    assert buffer.flush() == "and"


def test_max_wait_without_clause_marks() -> None:
    _, latin = fed(["one two three four fo"], max_wait_s=0.2)
    still_writing(latin, 0.21)
    assert latin.overdue() == "one two three four"  # the last word may be half a token
    _, chinese = fed(["这是一个没有标点的句子"], max_wait_s=0)
    assert chinese.overdue() == "这是一个没有标点的句子"
    _, short = fed(["two words"], max_wait_s=0)
    assert short.overdue() is None  # a few words first


def test_max_wait_takes_everything_once_the_writer_pauses() -> None:
    _, buffer = fed(["one two three, four fiv"], max_wait_s=0.05)
    time.sleep(0.06)
    assert buffer.overdue() == "one two three, four fiv"


def test_a_blank_buffer_has_no_deadline() -> None:
    _, buffer = fed(["  "])
    assert buffer.deadline() is None and buffer.flush() is None


def test_a_writer_too_short_for_max_wait_sets_no_timer_until_more_text() -> None:
    """Otherwise the conversation's timer would wake at once, again and again, for words it cannot say yet."""
    _, buffer = fed(["two words"], max_wait_s=0)
    assert buffer.overdue() is None and buffer.deadline() is None
    buffer.append(" and more")
    assert buffer.deadline() is not None and buffer.overdue() == "two words and more"


class FullRescan(SentenceBuffer):
    """The cutting as it was before it became incremental, every piece rescanning the whole buffer:
    the reference whose sentences the incremental scan must reproduce exactly."""

    def append(self, text: str) -> list[str]:
        self._last, self._too_short = text_stream.time.monotonic(), False  # the clock the test may fake
        if not self._text.strip():
            self._since = self._last
        self._text += text
        sentences = []
        while (cut := self._first_end()) is not None:
            head, self._text = self._text[:cut], self._text[cut:]
            if sentence := spoken(head):
                sentences.append(sentence)
        if not self._text.strip():
            self._since = None
        return sentences

    def _first_end(self) -> int | None:
        ends = [match.end() for match in re.finditer(r"[。！？；…!?]+[”’」』）)\"']*|\n", self._text)]
        for match in re.finditer(r"\.+[”’\"')\]]*(?=\s)", self._text):
            before = self._text[: match.start()].strip()
            word = before.rsplit(maxsplit=1)[-1] if before else ""
            bare = word.lstrip("(\"'“‘").lower()
            list_item = word.isdigit() and word == before
            if not (bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or list_item):
                ends.append(match.end())
        return min(ends, default=None)


# Pieces of text around every way a sentence may end, or seem to.
SNIPPETS = [" ", "  ", "\n", ".", "..", "...", "!", "?", "。", "！", "…", "”", '"', "'", ")", "]", "」", "(", ",", "，"]
SNIPPETS += ["Dr", "e.g", "etc", "p.m", "J", "a", "1", "12", "3.5", "word", "Hello", "你好", "天气", "x"]
Step = tuple[str, str, float]  # a method of the buffer, the piece (for append), then how long until the next


@st.composite
def conversations(draw: st.DrawFn) -> list[Step]:
    """A text in pieces of a few snippets each, with waits, overdue() and flush() between them."""
    pieces = st.lists(st.sampled_from(SNIPPETS), max_size=8).map("".join)
    waits = st.sampled_from([0.0, 0.0, 0.15, 0.3])  # max_wait_s is 0.2
    steps = [("append", piece, draw(waits)) for piece in draw(st.lists(pieces, max_size=40))]
    for _ in range(draw(st.integers(0, 4))):
        steps.insert(draw(st.integers(0, len(steps))), (draw(st.sampled_from(["overdue", "flush"])), "", draw(waits)))
    return steps


def said(buffer: SentenceBuffer, method: str, piece: str) -> list[str | None]:
    return buffer.append(piece) if method == "append" else [getattr(buffer, method)()]


@settings(max_examples=400, deadline=None)
@given(conversations())
@example([("append", "word.", 0), ("append", ".", 0), ("append", " x", 0)])  # a run of periods, in pieces
@example([("append", "Hello.", 0), ("append", "”", 0), ("append", " x", 0)])  # a quote after the period
@example([("append", "a! 1. b", 0)])  # "1." opens a list after a cut in the same piece
@example([("append", "one two three, fo", 0.15), ("append", "ur.", 0.1), ("overdue", "", 0), ("append", " x", 0)])
def test_incremental_cuts_are_those_of_a_full_rescan(steps: list[Step]) -> None:
    clock = [0.0]
    with mock.patch.object(text_stream, "time", SimpleNamespace(monotonic=lambda: clock[0])):
        incremental, reference = SentenceBuffer(0.2), FullRescan(0.2)
        for method, piece, wait in steps:
            assert said(incremental, method, piece) == said(reference, method, piece)
            assert len(incremental) == len(reference) and incremental.deadline() == reference.deadline()
            clock[0] += wait
        assert incremental.flush() == reference.flush()


class CountingScan:
    """The sentence-end pattern, counting the characters each scan may cover (from where it starts to the end)."""

    def __init__(self) -> None:
        self.pattern, self.scanned = text_stream._END, 0

    def finditer(self, text: str, pos: int) -> Iterator[re.Match[str]]:
        self.scanned += len(text) - pos
        return self.pattern.finditer(text, pos)


@pytest.mark.parametrize(
    "text",
    [
        "word " * 2000,  # no sentence end at all
        "Dr. Lee, Mr. Smith, e.g. etc. " * 300,  # abbreviations: periods that end nothing
        "." * 4000 + "x" + ")" * 2000 + "”" * 2000,  # runs that wait for the character after them
        "1. 2. 3. 4. a! b? c.\n你好。" * 400,  # many ends
    ],
    ids=["words", "abbreviations", "runs", "ends"],
)
def test_a_piece_costs_what_it_adds_not_the_buffer(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token by token, the scans cover each character about once: a rescan per piece would be quadratic
    (every message costing the whole buffer, which a client can make long)."""
    counting = CountingScan()
    monkeypatch.setattr(text_stream, "_END", counting)
    buffer = SentenceBuffer(10)
    for i in range(0, len(text), 3):
        buffer.append(text[i : i + 3])
    assert counting.scanned <= 2 * len(text)
    before = counting.scanned
    buffer.append("more")  # one more piece on a long buffer
    assert counting.scanned - before <= len("more")
