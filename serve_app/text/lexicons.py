"""Pronunciation lexicons: W3C PLS files (or the same entries as JSON) read into entries, and the rule that
applies up to a few of them to a text.

An entry says a grapheme (a word, a brand, a Chinese word) as its alias: the PLS ``<alias>``, or a pinyin
``<phoneme>`` written as voxcpm's inline ``{syllable}`` form. Phonemes in other alphabets (the PLS examples'
``ipa``) cannot be said by VoxCPM: they are skipped and counted, so a file made for another engine still loads.
Of several pronunciations the first with ``prefer="true"``, else the first (PLS 1.0's rule for synthesis).

Matching: the longest grapheme first, at each position from the left; a grapheme of letters or digits only
at word boundaries (``AI`` not inside ``SAID``), a Chinese one anywhere; case-sensitive unless its entry says
not. Hand-written rather than a regular expression of thousands of alternatives: a lookup per distinct
grapheme length at each position keeps three lexicons of 1,000 entries near a millisecond per 1,000
characters on one CPU core.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from serve_app.errors import BadRequest, PayloadTooLarge

PLS = "{http://www.w3.org/2005/01/pronunciation-lexicon}"
PINYIN_ALPHABETS = ("pinyin", "x-pinyin")
_PINYIN = re.compile(r"[a-zü:v]+[1-5]", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    grapheme: str
    alias: str  # what is said instead: words, or pinyin as {syllable}{syllable}
    case_sensitive: bool = True


@dataclass(frozen=True)
class Lexicon:
    entries: tuple[Entry, ...]
    skipped: int = 0  # pronunciations in alphabets VoxCPM cannot say (a lexeme with no other: left out)


def pinyin(phonemes: str) -> str | None:
    """Pinyin syllables with tone numbers as voxcpm's inline form, or None where they are not that."""
    syllables = phonemes.split()
    if not syllables or not all(_PINYIN.fullmatch(syllable) for syllable in syllables):
        return None
    return "".join(f"{{{syllable.lower()}}}" for syllable in syllables)


def from_pls(document: str | bytes, max_entries: int, field: str) -> Lexicon:
    """A PLS 1.0 document's entries; a 400 naming ``field`` where it is no such document (or declares a DTD or
    entities: refused before they are read), a 413 past ``max_entries``."""
    try:
        root = fromstring(document, forbid_dtd=True)
    except ElementTree.ParseError as error:
        line, column = error.position
        raise BadRequest(f"not well-formed XML at line {line}, column {column + 1}", field) from None
    except DefusedXmlException as error:
        raise BadRequest(f"a lexicon may not declare a DTD or entities ({type(error).__name__})", field) from None
    if root.tag != f"{PLS}lexicon":
        raise BadRequest("not a PLS lexicon: its root must be <lexicon> in the PLS namespace", field)
    alphabet = (root.get("alphabet") or "").lower()
    entries: list[Entry] = []
    skipped = 0
    for lexeme in root.iter(f"{PLS}lexeme"):
        graphemes = [" ".join((g.text or "").split()) for g in lexeme.findall(f"{PLS}grapheme")]
        said: list[tuple[str | None, bool]] = []  # (what is said, preferred), in document order
        for child in lexeme:
            preferred = child.get("prefer") == "true"
            if child.tag == f"{PLS}alias":
                said.append((" ".join((child.text or "").split()) or None, preferred))
            elif child.tag == f"{PLS}phoneme":
                spoken = None
                if (child.get("alphabet") or alphabet).lower() in PINYIN_ALPHABETS:
                    spoken = pinyin(child.text or "")
                skipped += spoken is None
                said.append((spoken, preferred))
        usable = [entry for entry in said if entry[0]]
        if not usable:
            continue
        alias = next((text for text, preferred in usable if preferred), usable[0][0])
        entries += [Entry(grapheme, alias) for grapheme in graphemes if grapheme]  # type: ignore[arg-type]
        if len(entries) > max_entries:
            raise PayloadTooLarge(f"the lexicon has more than {max_entries} entries", field)
    return Lexicon(tuple(entries), skipped)


def from_entries(entries: object, max_entries: int, field: str) -> Lexicon:
    """Entries given as JSON: ``[{"grapheme", "alias" or "pinyin", "case_sensitive"?}]``; a 400 naming the
    entry's field where one is not that, a 413 past ``max_entries``."""
    if not isinstance(entries, list):
        raise BadRequest(f"{field} is a JSON list of entries", field)
    if len(entries) > max_entries:
        raise PayloadTooLarge(f"the lexicon has {len(entries)} entries; at most {max_entries}", field)
    read = []
    for index, entry in enumerate(entries):
        where = f"{field}[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"grapheme", "alias", "pinyin", "case_sensitive"}:
            raise BadRequest(f"{where}: an object of grapheme, alias or pinyin, and case_sensitive", where)
        grapheme = " ".join(str(entry.get("grapheme") or "").split())
        if not grapheme:
            raise BadRequest(f"{where}.grapheme is required", f"{where}.grapheme")
        if ("alias" in entry) == ("pinyin" in entry):
            raise BadRequest(f"{where}: give alias or pinyin, one of them", where)
        said = " ".join(str(entry["alias"]).split()) if "alias" in entry else pinyin(str(entry["pinyin"]))
        if not said:
            raise BadRequest(f"{where}: pinyin syllables with tone numbers (zuo4), or a non-empty alias", where)
        read.append(Entry(grapheme, said, bool(entry.get("case_sensitive", True))))
    return Lexicon(tuple(read))


class Rewriter:
    """Lexicons applied to a text: the first lexicon that has a grapheme says it (a request's order)."""

    def __init__(self, lexicons: Sequence[Lexicon]) -> None:
        self._exact: dict[str, str] = {}
        self._folded: dict[str, str] = {}
        for lexicon in lexicons:
            for entry in lexicon.entries:
                table = self._exact if entry.case_sensitive else self._folded
                table.setdefault(entry.grapheme if entry.case_sensitive else entry.grapheme.lower(), entry.alias)
        lengths = {len(grapheme) for grapheme in (*self._exact, *self._folded)}
        self._lengths = sorted(lengths, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._lengths)

    def __call__(self, text: str) -> str:
        out: list[str] = []
        start = position = 0
        while position < len(text):
            found = self._match(text, position)
            if found is None:
                position += 1
                continue
            length, alias = found
            out += [text[start:position], alias]
            position = start = position + length
        out.append(text[start:])
        return "".join(out)

    def _match(self, text: str, position: int) -> tuple[int, str] | None:
        """The longest grapheme at ``position`` that stands there whole, and its alias."""
        if position and _word(text[position - 1]) and _word(text[position]):
            return None  # inside a word: only graphemes that are not words may start here (Chinese)
        for length in self._lengths:
            piece = text[position : position + length]
            if len(piece) < length:
                continue
            alias = self._exact.get(piece)
            if alias is None:
                alias = self._folded.get(piece.lower())
            if alias is None:
                continue
            after = position + length
            if not (_word(piece[-1]) and after < len(text) and _word(text[after])):
                return length, alias
        return None


def _word(char: str) -> bool:
    """A letter or digit of an alphabetic script: a grapheme of these matches whole words only."""
    return char.isalnum() and not ("\u3400" <= char <= "\u9fff")
