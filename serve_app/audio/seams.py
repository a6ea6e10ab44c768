"""Joining separately generated pieces of audio into one stream without a click or a gap.

Each sentence is generated on its own, so one ends and the next begins at unrelated sample
values. A short equal-power crossfade overlaps the end of one with the start of the next. To
stream it, the last ``overlap`` samples of a chunk that may end a piece are held back until the next
chunk shows whether a seam follows: a stream is delayed by those few milliseconds, not by a chunk, and
not at all where the caller knows that a chunk does not end its piece (the batched engine knows it
at every step; voxcpm's generator, in the reference engine, only after the fact).
"""

from __future__ import annotations

import numpy as np

SEAM_SECONDS = 0.01  # the crossfade between pieces generated separately (sentences, a document's chunks)


class Crossfader:
    def __init__(self, overlap: int) -> None:
        self._overlap = overlap
        self.emitted = 0  # samples returned so far
        self._held = np.zeros(0, dtype=np.float32)
        self._seam = False
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
        self._fade_in = np.sin(0.5 * np.pi * t).astype(np.float32)
        self._fade_out = np.cos(0.5 * np.pi * t).astype(np.float32)

    def next_segment(self) -> None:
        """The next chunk starts a new piece: crossfade it with what is held."""
        self._seam = True

    def boundary(self) -> int:
        """Where, in the samples returned, the piece just ended meets the next: the middle of their crossfade
        (at the end of the stream, once flushed: its last sample)."""
        held = len(self._held)
        return self.emitted + (self._overlap // 2 if held == self._overlap else held)

    def feed(self, chunk: np.ndarray, may_end: bool = True) -> np.ndarray:
        """What may be played now. If the chunk ``may_end`` its piece, its last ``overlap`` samples wait for
        the next call; otherwise it all goes (with what was held)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if self._seam and len(self._held) == self._overlap and len(chunk) >= self._overlap:
            head = chunk[: self._overlap] * self._fade_in + self._held * self._fade_out
            chunk = np.concatenate([head, chunk[self._overlap :]])
            self._held = np.zeros(0, dtype=np.float32)
        self._seam = False
        joined = np.concatenate([self._held, chunk])
        cut = max(0, len(joined) - self._overlap) if may_end else len(joined)
        self._held = joined[cut:]
        self.emitted += cut
        return joined[:cut]

    def flush(self) -> np.ndarray:
        held, self._held = self._held, np.zeros(0, dtype=np.float32)
        self.emitted += len(held)
        return held
