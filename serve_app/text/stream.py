"""Cutting text that arrives in pieces (a language model's tokens) into sentences to speak.

Unlike :func:`serve_app.text.split_sentences`, which sees a whole text, this sees only what has
arrived, so it must decide when a sentence is complete: at ``.?!`` followed by a space (never
inside an abbreviation or a number: "Dr. Lee", "3.5"), at ``。！？；…`` at once (CJK needs no
space after them, and a splitter that waits for one never cuts Chinese), at a newline; after
``max_wait_ms`` at the last clause mark once a few words are buffered (so a slow model's first
words are not held back); and on flush. A final ``.`` waits for the next piece, which tells
"3." from "3.5"; ``?`` and ``!`` do not.
"""

from __future__ import annotations

import re
import time

# Words after which a period does not end a sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m u.s u.k no fig approx dept inc ltd co corp gen col lt mt".split()
)
# At least this many words, or CJK characters, before max_wait_ms may cut a sentence short.
MIN_WAIT_WORDS = 3
MIN_WAIT_CJK_CHARS = 5

# A sentence end: a ``stop`` at once (CJK marks, ?!, a newline), a ``period`` once whitespace follows it
# and the word before it is no abbreviation. The period's run is matched whole (possessive, never from
# inside a run of periods): a long run costs one pass, not one per period.
_END = re.compile(r"(?P<stop>[。！？；…!?]+[”’」』）)\"']*|\n)|(?P<period>(?<!\.)\.++[”’\"')\]]*+(?=\s))")
# A period's run: a period, and the closing quotes after it, wait for the character after them.
_CLOSERS = "”’\"')]"
_PERIOD_RUN = "." + _CLOSERS
_NON_SPACE = re.compile(r"\S")
_CLAUSE_MARK = re.compile(r"[，,、：:;；—–]+\s*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_LEADING_CLOSERS = re.compile(r"^[\s”’」』）)\].,，。]+")


class SentenceBuffer:
    """The text of one utterance received so far and not yet cut into a sentence."""

    def __init__(self, max_wait_s: float) -> None:
        self._text = ""
        self._max_wait_s = max_wait_s
        self._since: float | None = None  # when the oldest text still buffered arrived (None: only blanks)
        self._last = 0.0  # when the newest did
        self._undecided = 0  # where the text may still hold a sentence end: before it, none
        self._too_short = False  # overdue() found too little to say: no deadline until more text comes

    def __len__(self) -> int:
        return len(self._text)

    def append(self, text: str) -> list[str]:
        """Add a piece; the sentences it completes. Only the piece and the undecided run of periods
        before it are scanned, so a piece costs what it adds however long the buffer is: a buffer
        rescanned per piece let a client make each message cost the whole buffer."""
        self._last, self._too_short = time.monotonic(), False
        was_blank = self._since is None
        known, undecided = len(self._text), self._undecided
        self._text += text
        start = 0  # of the text left once the sentences are cut off
        sentences: list[str] = []
        if text.strip(_PERIOD_RUN):  # anything but more of a period's run may end a sentence
            position = undecided
            while (end := _next_end(self._text, start, position)) is not None:
                if sentence := spoken(self._text[start:end]):
                    sentences.append(sentence)
                start = position = end
            if start:  # what is left came with this piece
                self._text, known, undecided = self._text[start:], 0, 0
        self._undecided = _undecided_from(self._text, known, undecided)
        blank = not self._text.strip() if start else was_blank and not text.strip()
        if blank:
            self._since = None
        elif was_blank:
            self._since = self._last
        return sentences

    def flush(self) -> str | None:
        """Everything buffered, as one last sentence (None when there is nothing to speak)."""
        text, self._text, self._since, self._undecided = self._text, "", None, 0
        return spoken(text)

    def deadline(self) -> float | None:
        """When :meth:`overdue` may cut a sentence short (monotonic time), if text is waiting."""
        return None if self._since is None or self._too_short else self._since + self._max_wait_s

    def overdue(self) -> str | None:
        """After ``max_wait_s``: what is buffered up to its last clause mark (else its last complete
        word; all of it when nothing came for ``max_wait_s`` either), once there is enough of it to
        say; None when there is not."""
        deadline, now = self.deadline(), time.monotonic()
        if deadline is None or now < deadline:
            return None
        if not _enough(self._text):  # only more text can change that: until then no timer need wake for it
            self._too_short = True
            return None
        marks = list(_CLAUSE_MARK.finditer(self._text))
        if now >= self._last + self._max_wait_s:  # the writer paused: its last word is whole
            cut = len(self._text)
        elif marks:
            cut = marks[-1].end()
        elif _CJK.search(self._text):
            cut = len(self._text)
        else:
            cut = self._text.rstrip().rfind(" ") + 1 or len(self._text)
        if not _enough(self._text[:cut]):  # the clause mark came early: say it all rather than a word or two
            cut = len(self._text)
        head, self._text = self._text[:cut], self._text[cut:]
        self._undecided -= cut  # a cut never falls inside the trailing period run: it follows a space or mark
        self._since = time.monotonic() if self._text.strip() else None
        return spoken(head)


def _next_end(text: str, start: int, position: int) -> int | None:
    """Where the first sentence of ``text[start:]`` ends, if one does; none ends before ``position``."""
    for match in _END.finditer(text, position):
        if match.lastgroup == "stop" or not _abbreviation(text, start, match.start()):
            return match.end()
    return None


def _undecided_from(text: str, known: int, undecided: int) -> int:
    """Where a sentence end may yet be found in ``text``: the last run of periods if only closing quotes
    follow it (whether it ends a sentence waits for the next character), else nowhere (its length).
    ``undecided`` is that of ``text[:known]``: only what came after it is walked, so a long run of
    periods or quotes costs nothing per piece."""
    end = len(text)
    while end > known and text[end - 1] in _CLOSERS:
        end -= 1
    start = end
    while start > known and text[start - 1] == ".":
        start -= 1
    if start > known:  # the walk ended in the new text
        return start if start < end else len(text)
    if start < end:  # the new text starts with periods: those before, if any, run on
        return undecided if known and text[known - 1] == "." else known
    return undecided if undecided < known else len(text)  # only closing quotes came


def _abbreviation(text: str, start: int, period: int) -> bool:
    """Whether the period at ``period`` belongs to a word that does not end a sentence, the buffer's text
    starting at ``start``. Only that word is looked at, not all the text before it."""
    end = period
    while end > start and text[end - 1].isspace():
        end -= 1
    begin = end
    while begin > start and not text[begin - 1].isspace():
        begin -= 1
    word = text[begin:end]
    bare = word.lstrip("(\"'“‘").lower()
    list_item = word.isdigit() and not _NON_SPACE.search(text, start, begin)  # "1. " opening a list
    return bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or list_item


def _enough(text: str) -> bool:
    return len(text.split()) >= MIN_WAIT_WORDS or len(_CJK.findall(text)) >= MIN_WAIT_CJK_CHARS


def spoken(text: str) -> str | None:
    """A piece as it is spoken: without the closing quotes or spaces it starts with; None if blank."""
    text = _LEADING_CLOSERS.sub("", text).strip()
    return text or None
