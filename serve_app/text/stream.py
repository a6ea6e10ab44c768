"""Cutting text that arrives in pieces (a language model's tokens) into sentences to speak.

Where a sentence ends is :mod:`serve_app.text.sentences`' rule, applied as the pieces come
(:class:`~serve_app.text.sentences.Sentences`): a sentence is given once the text after it proves its end,
so the sentences are those of the whole text however it was cut into pieces. What only a stream needs is
here: after ``max_wait_ms`` without an end, what is buffered is spoken up to its last clause mark once a
few words are (so a slow model's first words are not held back), and on flush all of it.
"""

from __future__ import annotations

import re
import time

from serve_app.text.sentences import CLAUSE_MARKS, CLOSERS, STOPS, Sentences

# At least this many words, or CJK characters, before max_wait_ms may cut a sentence short.
MIN_WAIT_WORDS = 3
MIN_WAIT_CJK_CHARS = 5

_CLAUSE_MARK = re.compile(rf"[{re.escape(CLAUSE_MARKS)}]+\s*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


class SentenceBuffer:
    """The text of one utterance received so far and not yet cut into a sentence."""

    def __init__(self, max_wait_s: float) -> None:
        self._sentences = Sentences()
        self._max_wait_s = max_wait_s
        self._since: float | None = None  # when the oldest text still buffered arrived (None: only blanks)
        self._last = 0.0  # when the newest did
        self._too_short = False  # overdue() found too little to say: no deadline until more text comes

    def __len__(self) -> int:
        return len(self._sentences)

    def append(self, text: str) -> list[str]:
        """Add a piece; the sentences it completes."""
        self._last, self._too_short = time.monotonic(), False
        sentences = self._sentences.feed(text)
        self._waiting(restart=bool(sentences))
        return sentences

    def flush(self) -> str | None:
        """Everything buffered, as one last sentence (None when there is nothing to speak)."""
        self._since = None
        return self._sentences.flush()

    def deadline(self) -> float | None:
        """When :meth:`overdue` may cut a sentence short (monotonic time), if text is waiting."""
        return None if self._since is None or self._too_short else self._since + self._max_wait_s

    def overdue(self) -> str | None:
        """After ``max_wait_s``: what is buffered up to its last clause mark (else its last complete word; all
        of it when nothing came for ``max_wait_s`` either, or when it ends as a sentence does and only waits
        for the next piece to prove it), once there is enough of it to say; None when there is not."""
        deadline, now = self.deadline(), time.monotonic()
        if deadline is None or now < deadline:
            return None
        pending, text = self._sentences.pending, self._sentences.text
        ended = text.rstrip().rstrip(CLOSERS).endswith(tuple(STOPS))  # a sentence, but for the proof
        if not (ended or _enough(f"{pending} {text}")):  # only more text can change that: no timer until then
            self._too_short = True
            return None
        marks = list(_CLAUSE_MARK.finditer(text))
        if ended or now >= self._last + self._max_wait_s:  # the writer paused: its last word is whole
            cut = len(text)
        elif marks:
            cut = marks[-1].end()
        elif _CJK.search(text):
            cut = len(text)
        else:
            cut = text.rstrip().rfind(" ") + 1 or len(text)
        if not _enough(f"{pending} {text[:cut]}"):  # the clause mark came early: all of it, not a word or two
            cut = len(text)
        sentence = self._sentences.take(cut)
        self._waiting(restart=True)
        return sentence

    def _waiting(self, restart: bool) -> None:
        """Keep ``_since`` (the clock of max_wait_s) for what is buffered now: none if nothing is, the time of
        this piece if the text waiting is new."""
        if self._sentences.blank:
            self._since = None
        elif restart or self._since is None:
            self._since = time.monotonic()


def _enough(text: str) -> bool:
    return len(text.split()) >= MIN_WAIT_WORDS or len(_CJK.findall(text)) >= MIN_WAIT_CJK_CHARS
