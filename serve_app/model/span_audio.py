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
    and the pause)."""

    def __init__(self, sentence: Sentence, sample_rate: int) -> None:
        self._stretch = stretcher(sentence.speed, sample_rate)
        self._pause = sentence.pause_after

    def feed(self, piece: np.ndarray) -> np.ndarray:
        return self._stretch.feed(piece)

    def finish(self) -> np.ndarray:
        return np.concatenate([self._stretch.finish(), np.zeros(self._pause, dtype=np.float32)])

    def whole(self, audio: np.ndarray) -> np.ndarray:
        """A sentence generated whole, as it is sent."""
        return np.concatenate([self.feed(audio), self.finish()])
