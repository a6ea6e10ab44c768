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

from serve_app.text import sentences
from serve_app.text import stream as text_stream
from serve_app.text.sentences import MAX_SENTENCE_CHARS, split_sentences
from serve_app.text.stream import SentenceBuffer

ISSUE_38 = "Dr. Watson met Prof. Moriarty at the station; then they left."


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
        (["Really", "?", " Yes", "!"], ["Really?"], "Yes!"),  # "!" waits too: "!?" or "!”" may follow
        (["1", ". ", "First item", ". "], ["1. First item."], None),
        (["你好", "。", "今天", "天气", "很好", "！", "”我们"], ["你好。", "今天天气很好！”"], "我们"),
        (["第一；第二…", "第三？"], ["第一；第二…"], "第三？"),  # "；" joins clauses
        (
            ["Dr", ". Watson met Prof", ". Moriarty at the station", "; then they left", ".", " Next"],
            [ISSUE_38],
            "Next",
        ),
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


# Pieces of text around every way a sentence may end, or seem to, and long runs past MAX_SENTENCE_CHARS.
SNIPPETS = [" ", "  ", "\n", ".", "..", "...", "!", "?", "。", "！", "…", "”", '"', "'", ")", "]", "」", "(", ",", "，"]
SNIPPETS += [";", "；", "Dr", "e.g", "etc", "p.m", "J", "a", "1", "12", "3.5", "word", "Hello", "你好", "天气", "x"]
SNIPPETS += ["word " * 15, "这是一个很长的分句，" * 4, "y" * 70]


@st.composite
def cut_texts(draw: st.DrawFn, alphabet: st.SearchStrategy[str]) -> tuple[str, list[str]]:
    """A text, and the same text cut into pieces anywhere."""
    text = draw(alphabet)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=30)))
    return text, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


SNIPPET_TEXTS = st.lists(st.sampled_from(SNIPPETS), max_size=60).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(cut_texts(SNIPPET_TEXTS), cut_texts(st.text(max_size=400))))
@example((ISSUE_38, ["Dr", ".", " Watson met Prof", ". ", "Moriarty at the station", "; then they left."]))
@example(("word.. x", ["word.", ".", " x"]))  # a run of periods, in pieces
@example(("Hello.” x", ["Hello.", "”", " x"]))  # a quote after the period
@example(("你好。”我们", ["你好。", "”我们"]))  # a quote after a CJK stop belongs to its sentence
@example(("a! 1. b", ["a! 1. b"]))  # "1." opens a list after a cut in the same piece
def test_any_pieces_give_the_sentences_of_the_whole(case: tuple[str, list[str]]) -> None:
    text, pieces = case
    assert "".join(pieces) == text
    buffer = SentenceBuffer(1e9)
    streamed = [sentence for piece in pieces for sentence in buffer.append(piece)]
    last = buffer.flush()
    assert streamed + ([last] if last else []) == split_sentences(text)
    assert len(buffer) == 0 and buffer.deadline() is None


Step = tuple[str, str, float]  # a method of the buffer, the piece (for append), then how long until the next


@st.composite
def conversations(draw: st.DrawFn) -> list[Step]:
    """A text in pieces, with waits, and overdue() and flush() between them."""
    waits = st.sampled_from([0.0, 0.0, 0.15, 0.3])  # max_wait_s is 0.2
    steps = [
        ("append", piece, draw(waits)) for piece in draw(st.lists(SNIPPET_TEXTS.map(lambda t: t[:40]), max_size=30))
    ]
    for _ in range(draw(st.integers(0, 6))):
        steps.insert(draw(st.integers(0, len(steps))), (draw(st.sampled_from(["overdue", "flush"])), "", draw(waits)))
    return steps


@settings(max_examples=300, deadline=None)
@given(conversations())
@example([("append", "one two three, fo", 0.15), ("append", "ur.", 0.1), ("overdue", "", 0), ("append", " x", 0)])
@example([("append", "好。", 0.3), ("overdue", "", 0), ("append", "对", 0)])  # ended, waiting for its proof
def test_max_wait_and_flush_lose_and_repeat_nothing(steps: list[Step]) -> None:
    """Cut short by time or flush, a text is still all said, once, in order, each sentence within its bound."""
    clock = [0.0]
    with mock.patch.object(text_stream, "time", SimpleNamespace(monotonic=lambda: clock[0])):
        buffer, said = SentenceBuffer(0.2), []
        for method, piece, wait in steps:
            said += buffer.append(piece) if method == "append" else [getattr(buffer, method)()]
            clock[0] += wait
        said.append(buffer.flush())
    text = "".join(piece for _, piece, _ in steps)
    assert "".join("".join(filter(None, said)).split()) == "".join(text.split())
    assert all(sentence is None or 0 < len(sentence) <= MAX_SENTENCE_CHARS for sentence in said)


def test_what_waits_is_bounded() -> None:
    """However long a text without a sentence end, the buffer holds less than a sentence's bound: the rest has
    gone as sentences cut at clauses (so a piece never costs the whole text)."""
    buffer = SentenceBuffer(1e9)
    for _ in range(2000):
        buffer.append("word ")
        assert len(buffer) <= MAX_SENTENCE_CHARS


class CountingScan:
    """The sentence-end pattern, counting the characters each scan may cover (from where it starts to the end)."""

    def __init__(self) -> None:
        self.pattern, self.scanned = sentences._END, 0

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
    (every message costing the whole buffer). A piece costs what it adds and at most the run of marks before it
    that it may complete, which the sentence bound keeps short."""
    counting = CountingScan()
    monkeypatch.setattr(sentences, "_END", counting)
    buffer = SentenceBuffer(10)
    for i in range(0, len(text), 3):
        buffer.append(text[i : i + 3])
    assert counting.scanned <= 2 * len(text)
    before = counting.scanned
    buffer.append("more")  # one more piece after a long text
    assert counting.scanned - before <= len("more") + MAX_SENTENCE_CHARS
