"""Where a sentence ends: the one rule by which every route and the model runtime cut text to speak.

A text is spoken one sentence at a time (one generation, one ``segment``, one ``SegmentEnd`` each), so this
rule decides what a client hears as a unit. A sentence ends:

- at ``。！？…!?``, with the marks and closing quotes right after them (``!?``, ``?”``);
- at a run of ``.`` followed by a space, unless it closes an abbreviation ("Dr.", "e.g."), an initial
  ("J.") or the number opening a list item ("1."); a period inside a word or number ("3.14") ends nothing;
- at a newline.

``;`` and ``；`` end nothing: they join clauses of one sentence, which the model reads with a pause. A piece
under ``MIN_SENTENCE_CHARS`` (a lone mark, "好。") joins the next; a sentence too long for one generation is
cut after its last clause mark (``，,、：:；;—–``), else its last space, else hard, so no piece is longer than
``MAX_SENTENCE_CHARS``.

:class:`Sentences` applies the rule to text that arrives in pieces: it gives a sentence only once what follows
proves where it ends, so any cutting of a text into pieces gives the sentences :func:`split_sentences` gives
for the whole.
"""

from __future__ import annotations

import functools
import re

MIN_SENTENCE_CHARS = 3  # shorter joins the next: a word and its mark ("你好。", "Hi.") is said well alone
MAX_SENTENCE_CHARS = 160  # what voxcpm says well in one generation
_CUT_CHARS = MAX_SENTENCE_CHARS - MIN_SENTENCE_CHARS  # a cut piece, with a short one joined to it, still fits

# Words after which a period does not end a sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m u.s u.k no fig approx dept inc ltd co corp gen col lt mt".split()
)
STOPS = "。！？…!?"
CLOSERS = "”’」』）)]\"'"
CLAUSE_MARKS = "，,、：:；;—–"
_RUN = set(STOPS + "." + CLOSERS)  # what may still extend a sentence end: it waits for the next character

_STOP, _TAIL, _CLOSE = (f"[{re.escape(chars)}]" for chars in (STOPS, "." + STOPS + CLOSERS, CLOSERS))
# Possessive runs, matched whole (never from inside a run of periods): a long run costs one pass.
_END = re.compile(rf"(?P<stop>{_STOP}{_TAIL}*+|\n)|(?P<period>(?<!\.)\.++{_CLOSE}*+(?=\s))")
_NON_SPACE = re.compile(r"\S")


class Sentences:
    """The sentences of a text given in pieces, each as soon as the text after it proves it complete."""

    def __init__(self) -> None:
        self.text = ""  # from the start of the sentence being read
        self.pending = ""  # a sentence under MIN_SENTENCE_CHARS, waiting to join the next
        self._scan = 0  # no sentence end of ``text`` starts before this: where the next piece's search starts

    def __len__(self) -> int:
        return len(self.pending) + len(self.text)

    @property
    def blank(self) -> bool:
        return not self.pending and _NON_SPACE.search(self.text) is None

    def feed(self, piece: str) -> list[str]:
        """Add a piece; the sentences it completes."""
        known = len(self.text)
        self.text += piece
        return self._cut(known, final=False)

    def flush(self) -> str | None:
        """The rest as the last sentence (None if blank): the text has ended. The rest is at most
        ``_CUT_CHARS`` long, so it fits in one sentence with the pending one."""
        parts = [*self._cut(len(self.text), final=True), self.pending]
        self.pending = ""
        return functools.reduce(_joined, filter(None, parts), "") or None

    def take(self, cut: int) -> str | None:
        """``text[:cut]`` as a sentence, with the pending one, whether it has ended or not (``max_wait_ms``)."""
        head, self.text, self._scan = self.text[:cut].strip(), self.text[cut:], 0
        joined, self.pending = _joined(self.pending, head) if head else self.pending, ""
        return joined or None

    def _cut(self, known: int, final: bool) -> list[str]:
        """The sentences ``text`` holds; ``text[:known]`` was searched before, up to ``_scan``."""
        sentences: list[str] = []
        while True:
            end = self._end(known)
            if end is not None and end <= _CUT_CHARS:
                cut = end
            elif len(self.text) > _CUT_CHARS:  # ends past the bound, if it has ended: it is too long either way
                cut = _cut_point(self.text)
            elif final and self.text:
                cut = len(self.text)
            else:
                return sentences
            piece, self.text, self._scan, known = self.text[:cut].strip(), self.text[cut:], 0, 0
            if piece:
                sentences += self._said(piece)

    def _end(self, known: int) -> int | None:
        """Where the sentence in ``text`` ends, once what follows proves it (a stop at the very end waits:
        more marks or quotes may belong to it); None while it has not."""
        text, run = self.text, len(self.text)
        while run > known and text[run - 1] in _RUN:  # only the new text is walked: a long run costs nothing
            run -= 1
        if run == known and known:  # only more of the run the last search stopped at: it proves no end
            self._scan = min(self._scan, known)
            return None
        for match in _END.finditer(text, self._scan):
            if match.lastgroup == "period" and _abbreviation(text, match.start()):
                continue
            if match.end() < len(text) or match.group() == "\n":
                return match.end()
            break
        self._scan = run  # an end not yet proven starts in the run at the end of the text, if anywhere
        return None

    def _said(self, piece: str) -> list[str]:
        """The sentences ``piece`` gives, after the pending one: joined to it, or pending itself if short."""
        if self.pending:
            piece, self.pending = _joined(self.pending, piece), ""
        if len(piece) < MIN_SENTENCE_CHARS:
            self.pending = piece
            return []
        return [piece]


def split_sentences(text: str) -> list[str]:
    """The sentences of a whole text."""
    sentences = Sentences()
    said = sentences.feed(text)
    last = sentences.flush()
    return [*said, last] if last else said


def _abbreviation(text: str, period: int) -> bool:
    """Whether the period at ``period`` closes a word that does not end a sentence. Only that word is read."""
    end = period
    while end > 0 and text[end - 1].isspace():
        end -= 1
    begin = end
    while begin > 0 and not text[begin - 1].isspace():
        begin -= 1
    word = text[begin:end]
    bare = word.lstrip("(\"'“‘").lower()
    list_item = word.isdigit() and _NON_SPACE.search(text, 0, begin) is None  # "1. " opening a list
    return bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or list_item


def _cut_point(text: str) -> int:
    """Where to cut a sentence longer than ``_CUT_CHARS``: after its last clause mark in the second half of
    the bound, else after its last space, else at the bound. Only ``text[:_CUT_CHARS]`` is read, so the cut
    is known as soon as the sentence is known to be too long."""
    for position in range(_CUT_CHARS, _CUT_CHARS // 2, -1):
        if text[position - 1] in CLAUSE_MARKS:
            return position
    for position in range(_CUT_CHARS, 0, -1):
        if text[position - 1].isspace():
            return position
    return _CUT_CHARS


def _joined(previous: str, piece: str) -> str:
    """Two pieces as one: a space after Latin text, nothing after CJK."""
    if not previous:
        return piece
    return f"{previous}{' ' if previous[-1].isascii() else ''}{piece}"
