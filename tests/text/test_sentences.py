"""Sentence splitting for long text: Chinese and English punctuation, bounded lengths."""

from __future__ import annotations

import pytest

from serve_app.text.sentences import MAX_SENTENCE_CHARS, MIN_SENTENCE_CHARS, split_sentences


@pytest.mark.parametrize(
    "text,expected",
    [
        ("你好，这是流式语音合成。", ["你好，这是流式语音合成。"]),
        ("今天天气很好。我们去公园散步吧！你觉得怎么样？", ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？"]),
        ("Hello there. This is a test! Is it working?", ["Hello there.", "This is a test!", "Is it working?"]),
        ("Dr. Smith went home. He slept.", ["Dr. Smith went home.", "He slept."]),
        (
            "混合的文本。Mixed text here. 这一句更长一些；最后一句…",
            ["混合的文本。", "Mixed text here.", "这一句更长一些；最后一句…"],
        ),
        ("no punctuation at all", ["no punctuation at all"]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_short_pieces_join_a_neighbour() -> None:
    assert split_sentences("好。对。是的。没问题。") == ["好。对。是的。没问题。"]
    assert all(len(s) >= MIN_SENTENCE_CHARS for s in split_sentences("嗯。今天的会议很重要。好。"))


def test_long_sentences_are_cut_at_clauses() -> None:
    text = "，".join(["这是一个比较长的分句"] * 40) + "。"
    sentences = split_sentences(text)
    assert all(len(s) <= MAX_SENTENCE_CHARS for s in sentences)
    assert "".join(sentences) == text
    assert all(s.endswith(("，", "。")) for s in sentences)


def test_nothing_is_lost() -> None:
    text = "第一句话。Second sentence! 第三句？" * 20
    assert "".join(split_sentences(text)).replace(" ", "") == text.replace(" ", "")
