"""SSML, a documented subset (docs/ssml.md), as the spans an utterance is spoken in (``model/types.Span``).

A text is SSML when its first non-space characters are ``<speak``, ``<?xml`` or ``<!DOCTYPE`` (as Amazon Polly
and Google read it). It is parsed with ``defusedxml`` with DTDs forbidden (so no entity, internal or external,
is ever expanded: billion laughs and external entities are refused before they cost anything) and its nesting
bounded while it is parsed (expat has no depth limit). What it becomes is bounded too, before any audio:
each break, all breaks together, the voices switched to, and the text's length once aliases and ``say-as``
are written out (``MarkupLimits``).

Elements: ``speak``, ``p`` and ``s`` (a sentence boundary each), ``break``, ``sub``, ``say-as`` (``say_as.py``),
``phoneme`` (pinyin, voxcpm's inline ``{zuo4}`` form), ``prosody rate``, ``voice name`` and ``lang``. Any other
element's text is spoken as written and the element named in ``Markup.ignored``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import XMLParser

from serve_app.errors import BadRequest, PayloadTooLarge
from serve_app.text.say_as import KINDS, language, say_as

_SSML_START = re.compile(r"\s*<(speak\b|\?xml\b|!DOCTYPE\b)", re.IGNORECASE)
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_TIME = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*", re.IGNORECASE)
_PINYIN = re.compile(r"[a-zü:v]+[1-5]", re.IGNORECASE)
# SSML's strengths as Azure sets them (SSML itself gives none): a comma's pause to a paragraph's
BREAK_STRENGTHS = {"none": 0.0, "x-weak": 0.25, "weak": 0.5, "medium": 0.75, "strong": 1.0, "x-strong": 1.25}
RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
PINYIN_ALPHABETS = ("pinyin", "x-pinyin")
BOUNDARIES = ("speak", "p", "s", "paragraph", "sentence")  # each ends the sentence before it


class MarkupLimits(Protocol):
    """What one SSML text may become: the config's ``limits.ssml`` (``config/access.SSMLConfig``)."""

    @property
    def max_break_s(self) -> float: ...  # one break
    @property
    def max_total_break_s(self) -> float: ...  # every break of the text together
    @property
    def max_voices(self) -> int: ...  # <voice> elements
    @property
    def max_chars(self) -> int: ...  # the text spoken, once aliases and say-as are written out
    @property
    def max_depth(self) -> int: ...  # nested elements


@dataclass(frozen=True)
class MarkedSpan:
    """A stretch of the text said one way: in a named saved voice (None: the request's), at a rate, with
    seconds of silence after it."""

    text: str
    voice: str | None = None
    speed: float = 1.0
    pause_after: float = 0.0


@dataclass
class Markup:
    spans: list[MarkedSpan] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # elements (or attributes) not in the subset, once each


def is_ssml(text: str) -> bool:
    return _SSML_START.match(text) is not None


def parse(
    text: str, limits: MarkupLimits, field_name: str = "text", rewrite: Callable[[str], str] | None = None
) -> Markup:
    """The SSML text as spans; a 400 naming ``field_name`` for malformed or forbidden XML (with its line and
    column) or an element used wrongly, a 413 naming it past ``limits``. ``rewrite`` (pronunciation lexicons)
    applies to the text as written, not to what ``<sub>``, ``<say-as>`` and ``<phoneme>`` say: those win."""
    root = _tree(text, limits.max_depth, field_name)
    reader = _Reader(limits, field_name, rewrite)
    if _name(root) != "speak":
        raise BadRequest(f"SSML's root element is <speak>, not <{_name(root)}>", field_name)
    reader.element(root, _Style(None, 1.0, root.get(_XML_LANG) or language(text, None)))
    reader.close_span()
    return Markup(reader.spans, reader.ignored)


class _DepthBound(ElementTree.TreeBuilder):
    """A tree builder that stops the parse at the first element past ``max_depth`` (at once, not after)."""

    def __init__(self, max_depth: int, field_name: str) -> None:
        super().__init__()
        self._depth, self._max, self._field = 0, max_depth, field_name

    def start(self, tag: str, attrs: dict[str, str]) -> ElementTree.Element:
        self._depth += 1
        if self._depth > self._max:
            raise BadRequest(f"SSML nests elements deeper than {self._max}", self._field)
        return super().start(tag, attrs)

    def end(self, tag: str) -> ElementTree.Element:
        self._depth -= 1
        return super().end(tag)


def _tree(text: str, max_depth: int, field_name: str) -> ElementTree.Element:
    parser = XMLParser(target=_DepthBound(max_depth, field_name), forbid_dtd=True)
    try:
        parser.feed(text)
        return parser.close()
    except ElementTree.ParseError as error:
        line, column = error.position
        reason = str(error).split(":")[0]
        where = f"line {line}, column {column + 1}"
        raise BadRequest(f"SSML is not well-formed XML: {reason} at {where}", field_name) from None
    except DefusedXmlException as error:
        raise BadRequest(
            f"SSML may not declare a DTD or entities ({type(error).__name__}): none is read", field_name
        ) from None


@dataclass(frozen=True)
class _Style:
    voice: str | None
    speed: float
    lang: str | None


def _name(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]  # namespaced or bare: <speak xmlns="http://www.w3.org/2001/10/synthesis">


class _Reader:
    """Walks the tree in document order, gathering text into spans: a span closes where its voice or rate
    changes, at a sentence boundary, and at a break (which becomes its pause)."""

    def __init__(self, limits: MarkupLimits, field_name: str, rewrite: Callable[[str], str] | None) -> None:
        self.limits, self.field, self._rewrite = limits, field_name, rewrite
        self.spans: list[MarkedSpan] = []
        self.ignored: list[str] = []
        self._pieces: list[str] = []
        self._style = _Style(None, 1.0, None)
        self._chars = 0
        self._breaks = 0.0
        self._voices = 0

    def element(self, element: ElementTree.Element, style: _Style) -> None:
        name = _name(element)
        if name == "break":
            self._break(element)
        elif name == "sub":
            self._text(self._required(element, "alias"), style, written=False)
        elif name == "say-as":
            self._say_as(element, style)
        elif name == "phoneme":
            self._phoneme(element, style)
        else:
            inner = self._styled(element, name, style)
            if name in BOUNDARIES:
                self.close_span()
            self._text(element.text, inner)
            for child in element:
                self.element(child, inner)
                self._text(child.tail, inner)
            if name in BOUNDARIES:
                self.close_span()

    def close_span(self, pause: float = 0.0) -> None:
        """The text gathered so far as a span (if it says anything), with ``pause`` after it."""
        text = " ".join("".join(self._pieces).split())
        self._pieces = []
        if text:
            self.spans.append(MarkedSpan(text, self._style.voice, self._style.speed, pause))

    @property
    def _open(self) -> bool:
        """Whether words were gathered since the last span closed."""
        return any(piece.strip() for piece in self._pieces)

    def _styled(self, element: ElementTree.Element, name: str, style: _Style) -> _Style:
        """The style inside ``element``: a voice, a rate, a language it sets; other elements named as ignored."""
        lang = element.get(_XML_LANG) or style.lang
        if name == "voice":
            if not (voice := (element.get("name") or "").strip()):
                raise BadRequest("<voice> needs a name: a saved voice's id or name", self.field)
            self._voices += 1
            if self._voices > self.limits.max_voices:
                raise PayloadTooLarge(f"SSML switches voices more than {self.limits.max_voices} times", self.field)
            self._ignore_attributes(element, name, {"name", _XML_LANG})
            return _Style(voice, style.speed, lang)
        if name == "prosody":
            self._ignore_attributes(element, name, {"rate"})
            rate = element.get("rate")
            return _Style(style.voice, style.speed * (1.0 if rate is None else self._rate(rate)), lang)
        if name not in (*BOUNDARIES, "lang"):
            self._ignore(name)
        return _Style(style.voice, style.speed, lang)

    def _text(self, text: str | None, style: _Style, written: bool = True) -> None:
        """Text to say in ``style``: the document's own (``written``: lexicons apply) or what an element says."""
        if not text:
            return
        if written and self._rewrite is not None:
            text = self._rewrite(text)
        if self._open and style != self._style:
            self.close_span()
        if not self._open:
            self._style = style
        self._chars += len(text)
        if self._chars > self.limits.max_chars:
            raise PayloadTooLarge(
                f"SSML's text, written out, is longer than {self.limits.max_chars} characters", self.field
            )
        self._pieces.append(text)

    def _break(self, element: ElementTree.Element) -> None:
        time, strength = element.get("time"), element.get("strength")
        if time is not None:
            if (match := _TIME.fullmatch(time)) is None:
                raise BadRequest(f"<break time={time!r}>: seconds or milliseconds (1.5s, 800ms)", self.field)
            seconds = float(match[1]) / (1000 if match[2].lower() == "ms" else 1)
        elif strength is not None:
            if strength not in BREAK_STRENGTHS:
                raise BadRequest(f"<break strength={strength!r}>: one of {', '.join(BREAK_STRENGTHS)}", self.field)
            seconds = BREAK_STRENGTHS[strength]
        else:
            seconds = BREAK_STRENGTHS["medium"]
        if seconds > self.limits.max_break_s:
            raise BadRequest(f"<break> of {seconds:g} s: at most {self.limits.max_break_s:g} s", self.field)
        self._breaks += seconds
        if self._breaks > self.limits.max_total_break_s:
            raise PayloadTooLarge(f"SSML's breaks add up to more than {self.limits.max_total_break_s:g} s", self.field)
        if self._open:
            self.close_span(seconds)
        elif self.spans:  # right after a span: its pause grows
            last = self.spans[-1]
            self.spans[-1] = MarkedSpan(last.text, last.voice, last.speed, last.pause_after + seconds)
        else:  # before any words: a pause alone (the model layer renders none before the first sentence)
            self.spans.append(MarkedSpan("", None, 1.0, seconds))

    def _say_as(self, element: ElementTree.Element, style: _Style) -> None:
        kind = self._required(element, "interpret-as")
        content = "".join(element.itertext())
        if kind not in KINDS:
            self._ignore(f"say-as interpret-as={kind}")
            self._text(content, style)
            return
        lang = language(content, style.lang)
        self._text(say_as(kind, content, lang, element.get("format")), style, written=False)

    def _phoneme(self, element: ElementTree.Element, style: _Style) -> None:
        alphabet = (element.get("alphabet") or "").strip().lower()
        if alphabet not in PINYIN_ALPHABETS:
            raise BadRequest(
                f'<phoneme alphabet={alphabet or None!r}>: VoxCPM reads pinyin alone (alphabet="pinyin")', self.field
            )
        syllables = self._required(element, "ph").split()
        if not syllables or not all(_PINYIN.fullmatch(syllable) for syllable in syllables):
            raise BadRequest(
                f'<phoneme ph={element.get("ph")!r}>: pinyin syllables with tone numbers, such as "zuo4"', self.field
            )
        self._text("".join(f"{{{syllable.lower()}}}" for syllable in syllables), style, written=False)

    def _rate(self, rate: str) -> float:
        rate = rate.strip().lower()
        if rate in RATES:
            return RATES[rate]
        match = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)(%?)", rate)
        if match is None:
            raise BadRequest(
                f"<prosody rate={rate!r}>: one of {', '.join(RATES)}, a percentage (80%) or a multiplier", self.field
            )
        value = float(match[2]) / (100 if match[3] else 1)
        if match[1]:  # SSML 1.0's relative change: +10% is 1.1x
            return 1.0 + value if match[1] == "+" else 1.0 - value
        return value

    def _required(self, element: ElementTree.Element, attribute: str) -> str:
        if not (value := element.get(attribute)):
            raise BadRequest(f"<{_name(element)}> needs its {attribute!r} attribute", self.field)
        return value

    def _ignore_attributes(self, element: ElementTree.Element, name: str, taken: set[str]) -> None:
        for attribute in element.attrib:
            if attribute not in taken:
                self._ignore(f"{name} {attribute}")

    def _ignore(self, what: str) -> None:
        if what not in self.ignored:
            self.ignored.append(what)
