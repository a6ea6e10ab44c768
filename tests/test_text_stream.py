"""Cutting streamed text into sentences: where speech may start while a language model still writes."""

from __future__ import annotations

import time

import pytest

from serve_app.text_stream import SentenceBuffer


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
