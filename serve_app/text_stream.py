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

_CJK_END = re.compile(r"[。！？；…!?]+[”’」』）)\"']*|\n")
_LATIN_END = re.compile(r"\.+[”’\"')\]]*(?=\s)")
_CLAUSE_MARK = re.compile(r"[，,、：:;；—–]+\s*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_LEADING_CLOSERS = re.compile(r"^[\s”’」』）)\].,，。]+")


class SentenceBuffer:
    """The text of one utterance received so far and not yet cut into a sentence."""

    def __init__(self, max_wait_s: float) -> None:
        self._text = ""
        self._max_wait_s = max_wait_s
        self._since: float | None = None  # when the oldest text still buffered arrived
        self._last = 0.0  # when the newest did

    def __len__(self) -> int:
        return len(self._text)

    def append(self, text: str) -> list[str]:
        """Add a piece; the sentences it completes."""
        self._last = time.monotonic()
        if not self._text.strip():
            self._since = self._last
        self._text += text
        return self._complete()

    def flush(self) -> str | None:
        """Everything buffered, as one last sentence (None when there is nothing to speak)."""
        text, self._text, self._since = self._text, "", None
        return _spoken(text)

    def deadline(self) -> float | None:
        """When :meth:`overdue` may cut a sentence short (monotonic time), if text is waiting."""
        return None if self._since is None else self._since + self._max_wait_s

    def overdue(self) -> str | None:
        """After ``max_wait_s``: what is buffered up to its last clause mark (else its last complete
        word; all of it when nothing came for ``max_wait_s`` either), once there is enough of it to
        say; None when there is not."""
        deadline, now = self.deadline(), time.monotonic()
        if deadline is None or now < deadline or not _enough(self._text):
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
        head, self._text = self._text[:cut], self._text[cut:]
        if not _enough(head):  # the clause mark came early: say it all rather than a word or two
            head, self._text = head + self._text, ""
        self._since = time.monotonic() if self._text.strip() else None
        return _spoken(head)

    def _complete(self) -> list[str]:
        sentences = []
        while (cut := self._next_cut()) is not None:
            head, self._text = self._text[:cut], self._text[cut:]
            if sentence := _spoken(head):
                sentences.append(sentence)
        if not self._text.strip():
            self._since = None
        return sentences

    def _next_cut(self) -> int | None:
        """Where the first complete sentence ends, if one is."""
        ends = [match.end() for match in _CJK_END.finditer(self._text)]
        latin = _LATIN_END.finditer(self._text)
        ends += [match.end() for match in latin if not _abbreviation(self._text, match.start())]
        return min(ends, default=None)


def _abbreviation(text: str, period: int) -> bool:
    """Whether the period at ``period`` belongs to a word that does not end a sentence."""
    before = text[:period].strip()
    word = before.rsplit(maxsplit=1)[-1] if before else ""
    bare = word.lstrip("(\"'“‘").lower()
    list_item = word.isdigit() and word == before  # "1. " opening a list
    return bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or list_item


def _enough(text: str) -> bool:
    return len(text.split()) >= MIN_WAIT_WORDS or len(_CJK.findall(text)) >= MIN_WAIT_CJK_CHARS


def _spoken(text: str) -> str | None:
    """A piece as it is spoken: without the closing quotes or spaces it starts with; None if blank."""
    text = _LEADING_CLOSERS.sub("", text).strip()
    return text or None
