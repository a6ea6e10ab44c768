"""Where a sentence ends: the one rule of the long-text plan and the WebSocket (serve_app/text/sentences.py)."""

from __future__ import annotations

import pytest

from serve_app.text.sentences import MAX_SENTENCE_CHARS, MIN_SENTENCE_CHARS, split_sentences

ISSUE_38 = "Dr. Watson met Prof. Moriarty at the station; then they left."


@pytest.mark.parametrize(
    "text,expected",
    [
        (ISSUE_38, [ISSUE_38]),
        ("你好，这是流式语音合成。", ["你好，这是流式语音合成。"]),
        ("今天天气很好。我们去公园散步吧！你觉得怎么样？", ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？"]),
        ("Hello there. This is a test! Is it working?", ["Hello there.", "This is a test!", "Is it working?"]),
        ("Dr. Smith went home. He slept.", ["Dr. Smith went home.", "He slept."]),
        (
            "Mr. and Mrs. Lee met Ms. Wu on St. James St. today.",
            ["Mr. and Mrs. Lee met Ms. Wu on St. James St. today."],
        ),
        (
            "Fruit, e.g. apples, i.e. food, etc. are good. Yes.",
            ["Fruit, e.g. apples, i.e. food, etc. are good.", "Yes."],
        ),
        ("Pi is 3.14 today. See J. K. Rowling. Ok", ["Pi is 3.14 today.", "See J. K. Rowling.", "Ok"]),
        ("1. First item. 2. Second item.", ["1. First item.", "2. Second item."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("她说：“走吧！”然后走了。", ["她说：“走吧！”", "然后走了。"]),
        ("Really?! Yes... fine.", ["Really?!", "Yes...", "fine."]),
        ("a heading\nand a line under it", ["a heading", "and a line under it"]),
        ("no punctuation at all", ["no punctuation at all"]),
        ("", []),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text",
    ["one clause; another clause; a third.", "第一句；第二句；第三句。", "这一句更长一些；最后一句…"],
)
def test_a_semicolon_joins_clauses_and_ends_nothing(text: str) -> None:
    assert split_sentences(text) == [text]


def test_a_piece_under_the_minimum_joins_the_next() -> None:
    assert split_sentences("好。对。是的。没问题。") == ["好。对。", "是的。", "没问题。"]
    assert split_sentences("。Hello there.") == ["。Hello there."]  # a lone mark is no sentence
    assert split_sentences("Hi. Ok") == ["Hi.", "Ok"]  # the last stands alone: nothing follows to join
    assert all(len(s) >= MIN_SENTENCE_CHARS for s in split_sentences("嗯。今天的会议很重要。好。对吧？"))


def test_long_sentences_are_cut_at_clauses() -> None:
    text = "，".join(["这是一个比较长的分句"] * 40) + "。"
    sentences = split_sentences(text)
    assert len(sentences) > 1 and all(len(s) <= MAX_SENTENCE_CHARS for s in sentences)
    assert "".join(sentences) == text
    assert all(s.endswith(("，", "。")) for s in sentences)


def test_long_sentences_without_clause_marks_are_cut_at_spaces_else_hard() -> None:
    words = " ".join(["word"] * 100) + "."
    sentences = split_sentences(words)
    assert all(len(s) <= MAX_SENTENCE_CHARS and s.split() == ["word"] * len(s.split()) for s in sentences[:-1])
    assert " ".join(sentences) == words
    assert "".join(split_sentences("a" * 400)) == "a" * 400


def test_nothing_is_lost() -> None:
    text = "第一句话。Second sentence! 第三句？" * 20
    assert "".join(split_sentences(text)).replace(" ", "") == text.replace(" ", "")
