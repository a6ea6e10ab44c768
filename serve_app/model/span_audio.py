"""A sentence's audio as its span asks (``types.Span``): at the span's speaking rate, then its pause.

Both engines pass each sentence's audio through one of these after the plan has it (the voice a sentence
hands on to the next is its audio as generated) and before the seam with the next sentence (so that the
crossfade and the sentence ends a stream reports fall where the listener hears them). A span's rate is
stretched here, on the model replica, because only here is it known which audio is whose; the answer's own
``speed`` is the ingress's, over the whole stream (``ingress/audio_output.py``). Spans at rate 1 (every
route's today) cost nothing.
"""

from __future__ import annotations

import numpy as np

from serve_app.audio.stretch import stretcher
from serve_app.model.plan import Sentence


class SpanAudio:
    """One sentence's audio on its way out: ``feed`` its pieces, ``finish`` at its end (the stretcher's tail
    and the pause). A stretched sentence's first audio is held until it is at least ``seam`` samples long: the
    stretcher's first output after its start-up can be a few dozen samples, too short to crossfade the seam
    with the sentence before (``audio/seams.py`` would join them without a fade)."""

    def __init__(self, sentence: Sentence, sample_rate: int, seam: int = 0) -> None:
        self._stretch = stretcher(sentence.speed, sample_rate)
        self._pause = sentence.pause_after
        self._first: np.ndarray | None = np.zeros(0, dtype=np.float32) if sentence.speed != 1.0 else None
        self._seam = seam

    def feed(self, piece: np.ndarray) -> np.ndarray:
        out = self._stretch.feed(piece)
        if self._first is None:
            return out
        self._first = np.concatenate([self._first, out])
        if len(self._first) < self._seam:
            return np.zeros(0, dtype=np.float32)
        out, self._first = self._first, None
        return out

    def finish(self) -> np.ndarray:
        held = np.zeros(0, dtype=np.float32) if self._first is None else self._first
        return np.concatenate([held, self._stretch.finish(), np.zeros(self._pause, dtype=np.float32)])

    def whole(self, audio: np.ndarray) -> np.ndarray:
        """A sentence generated whole, as it is sent."""
        return np.concatenate([self.feed(audio), self.finish()])
