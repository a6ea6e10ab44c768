"""When each word of a segment is spoken: the words of a text, and their times estimated from the segment's
exact duration where no aligner heard them (``aligner.py`` does, where one is configured).

A word is what captions show: a run of text between spaces, punctuation kept with the word it follows (or,
opening quotes and brackets, precedes); Chinese and Japanese, written without spaces, are timed per
character. Every character of the text is in exactly one word, in order, so joining the words gives the
text back (spaces aside). An estimate spreads the segment over its words by their share of its spoken
characters (letters, digits, CJK): a crude model of speech, honest about being one (``source: "estimated"``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Scripts written without spaces, timed a character at a time: CJK ideographs, kana, Hangul syllables.
_PER_CHARACTER = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f]")
_OPENING = frozenset("\"'“‘(（[【《「『")


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float

    def public(self) -> dict:
        return {"word": self.word, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3)}


def words(text: str) -> list[str]:
    """The text's words, in order, every character in one of them (spaces dropped)."""
    found: list[str] = []
    pending = ""  # opening punctuation, waiting for the word it opens
    for token in text.split():
        for piece in _pieces(token):
            if not _spoken_characters(piece):
                if all(character in _OPENING for character in piece):
                    pending += piece
                elif found:
                    found[-1] += piece
                else:
                    pending += piece
                continue
            found.append(pending + piece)
            pending = ""
    if pending:
        if found:
            found[-1] += pending
        else:
            found.append(pending)
    return found


def _pieces(token: str) -> list[str]:
    """A space-free token cut before and after each character of a script timed per character."""
    pieces: list[str] = []
    current = ""
    for character in token:
        if _PER_CHARACTER.match(character):
            if current:
                pieces.append(current)
            pieces.append(character)
            current = ""
        else:
            current += character
    if current:
        pieces.append(current)
    return pieces


def _spoken_characters(word: str) -> int:
    """Letters, digits and ideographs: what takes time to say (punctuation does not)."""
    return sum(1 for character in word if unicodedata.category(character)[0] in "LN")


def estimated(text: str, start_s: float, end_s: float) -> list[Word]:
    """The text's words spread over ``start_s``..``end_s`` by their share of its spoken characters."""
    found = words(text)
    weights = [max(1, _spoken_characters(word)) for word in found]
    total = sum(weights)
    timed, elapsed = [], 0
    for word, weight in zip(found, weights, strict=True):
        begin = start_s + (end_s - start_s) * elapsed / total
        elapsed += weight
        timed.append(Word(word, begin, start_s + (end_s - start_s) * elapsed / total))
    return timed
