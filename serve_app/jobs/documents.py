"""A document as a job renders it: chapters, each cut into chunks of whole sentences, each chunk a list of spans
(``model/types.Span``) with the pauses a listener expects between sentences, paragraphs and chapters.

The input is plain text or Markdown. An ATX heading (``#`` to ``######``) starts a chapter and is spoken as its
first line; blank lines separate paragraphs; the lines of one paragraph are one text (a file wrapped at 70
columns still has sentences across its line ends). Of Markdown's inline markup only what would be read aloud
wrongly is taken out (emphasis and code marks, link and image targets, list bullets); the rest is text. The
sentences are the service's one rule (``text/sentences.py``); a chunk holds whole sentences up to
``chunk_chars`` (a sentence is never longer than the rule's ``MAX_SENTENCE_CHARS``) and never crosses a chapter,
so that a chapter's audio is whole chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serve_app.config.jobs import JobPauses
from serve_app.model.types import Span
from serve_app.text.sentences import split_sentences

_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<title>.*?)[ \t#]*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_IMAGE_OR_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\([^)]*\)")
_MARKS = re.compile(r"(\*{1,3}|_{2,3}|`+)")


@dataclass(frozen=True)
class Chapter:
    title: str | None  # its heading's text; None for what comes before the first heading
    chunks: list[tuple[Span, ...]]


def chapters(document: str, chunk_chars: int, pauses: JobPauses) -> list[Chapter]:
    """The document's chapters, each as the chunks a job renders one at a time; blank chapters left out."""
    found = []
    for title, paragraphs in _sections(document):
        spans = [span for paragraph in paragraphs for span in _paragraph(paragraph, pauses)]
        if title:
            spans.insert(0, Span(title, pause_after=pauses.paragraph_s))
        if spans:
            spans[-1] = Span(spans[-1].text, pause_after=pauses.chapter_s)
            found.append(Chapter(title, _chunked(spans, chunk_chars)))
    return found


def _sections(document: str) -> list[tuple[str | None, list[str]]]:
    """(heading, paragraphs) in order; the paragraphs' lines joined, inline markup taken out."""
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    lines: list[str] = []

    def paragraph_ends() -> None:
        if text := " ".join(lines).strip():
            sections[-1][1].append(text)
        lines.clear()

    for line in document.splitlines():
        if heading := _HEADING.match(line):
            paragraph_ends()
            sections.append((_plain(heading["title"]) or None, []))
        elif not line.strip():
            paragraph_ends()
        else:
            lines.append(_plain(_BULLET.sub("", line)))
    paragraph_ends()
    return sections


def _plain(text: str) -> str:
    return _MARKS.sub("", _IMAGE_OR_LINK.sub(lambda link: link["text"], text)).strip()


def _paragraph(paragraph: str, pauses: JobPauses) -> list[Span]:
    """A paragraph's sentences, the last one followed by the paragraph's pause."""
    spans = [Span(s.strip(), pause_after=pauses.sentence_s) for s in split_sentences(paragraph) if s.strip()]
    if spans:
        spans[-1] = Span(spans[-1].text, pause_after=pauses.paragraph_s)
    return spans


def _chunked(spans: list[Span], chunk_chars: int) -> list[tuple[Span, ...]]:
    chunks: list[tuple[Span, ...]] = []
    chunk: list[Span] = []
    size = 0
    for span in spans:
        if chunk and size + len(span.text) > chunk_chars:
            chunks.append(tuple(chunk))
            chunk, size = [], 0
        chunk.append(span)
        size += len(span.text) + 1
    if chunk:
        chunks.append(tuple(chunk))
    return chunks
