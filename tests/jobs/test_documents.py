"""A document as chapters of chunks of spans: headings, paragraphs, wrapped lines, Markdown, pauses, chunk size."""

from __future__ import annotations

from serve_app.config.jobs import JobPauses
from serve_app.jobs.documents import chapters
from serve_app.model.types import Span
from serve_app.text.sentences import MAX_SENTENCE_CHARS

PAUSES = JobPauses(sentence_s=0.1, paragraph_s=0.6, chapter_s=1.5)
BOOK = """A preface before any heading.

# Chapter One

It was a dark and stormy
night. The rain fell in torrents.

Except at occasional intervals.

## Chapter *Two*

- A **bold** item with [a link](https://example.com/x).
- 第二项。
"""


def test_headings_start_chapters_and_are_spoken_first() -> None:
    found = chapters(BOOK, 600, PAUSES)
    assert [chapter.title for chapter in found] == [None, "Chapter One", "Chapter Two"]
    assert found[0].chunks == [(Span("A preface before any heading.", pause_after=1.5),)]
    assert found[1].chunks == [
        (
            Span("Chapter One", pause_after=0.6),
            Span("It was a dark and stormy night.", pause_after=0.1),  # one sentence across the wrapped line
            Span("The rain fell in torrents.", pause_after=0.6),  # a paragraph's end
            Span("Except at occasional intervals.", pause_after=1.5),  # the chapter's
        )
    ]


def test_markdown_that_would_be_read_aloud_is_taken_out() -> None:
    (chunk,) = chapters(BOOK, 600, PAUSES)[2].chunks
    assert [span.text for span in chunk] == ["Chapter Two", "A bold item with a link.", "第二项。"]


def test_chunks_hold_whole_sentences_up_to_the_size_and_never_cross_a_chapter() -> None:
    sentence = "This sentence is exactly fifty characters long ok."
    document = " ".join([sentence] * 10) + "\n# Next\n" + sentence
    first, second = chapters(document, 160, JobPauses())
    assert [len(chunk) for chunk in first.chunks] == [3, 3, 3, 1]  # 3 x 51 characters fit in 160
    assert all(sum(len(span.text) for span in chunk) <= 160 for chunk in first.chunks)
    assert [[span.text for span in chunk] for chunk in second.chunks] == [["Next", sentence]]


def test_a_long_sentence_is_cut_by_the_one_rule_and_blank_documents_have_no_chapters() -> None:
    (chapter,) = chapters("，".join(["很长的一个分句"] * 60) + "。", MAX_SENTENCE_CHARS, JobPauses())
    assert all(len(span.text) <= MAX_SENTENCE_CHARS for chunk in chapter.chunks for span in chunk)
    assert chapters("\n\n  \n# \n", 600, JobPauses()) == []
