"""Splitting long text into sentences, so it can be spoken one sentence at a time.

Ends of sentences in Chinese and English (and the other CJK and Latin punctuation they share);
pieces too short to stand alone join their neighbour, and over-long ones are cut at the next
comma or space, so no generation is asked for more than voxcpm handles well in one go.
"""

from __future__ import annotations

import re

MIN_SENTENCE_CHARS = 6
MAX_SENTENCE_CHARS = 160

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])|(?<=\.)(?=\s)|(?<=[.!?][\"'”’])(?=\s)")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])|(?<=\s)")


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    for piece in (p.strip() for p in _SENTENCE_END.split(text)):
        if not piece:
            continue
        for part in _bounded(piece):
            if sentences and (len(sentences[-1]) < MIN_SENTENCE_CHARS or len(part) < MIN_SENTENCE_CHARS):
                joined = f"{sentences[-1]}{_joiner(sentences[-1])}{part}"
                if len(joined) <= MAX_SENTENCE_CHARS:
                    sentences[-1] = joined
                    continue
            sentences.append(part)
    return sentences or [text.strip()]


def _bounded(sentence: str) -> list[str]:
    """Cut a sentence longer than MAX_SENTENCE_CHARS at clause ends, else hard."""
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return [sentence]
    parts, current = [], ""
    for clause in _CLAUSE_END.split(sentence):
        while len(clause) > MAX_SENTENCE_CHARS:
            parts.append(clause[:MAX_SENTENCE_CHARS])
            clause = clause[MAX_SENTENCE_CHARS:]
        if len(current) + len(clause) > MAX_SENTENCE_CHARS:
            parts.append(current)
            current = ""
        current += clause
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _joiner(previous: str) -> str:
    """A space between Latin words, nothing after CJK."""
    return " " if previous and previous[-1].isascii() else ""
