"""A sentence's audio as its span asks: the rate, the pause, and a first piece long enough for the seam."""

from __future__ import annotations

import numpy as np

from serve_app.audio.stretch import stretch
from serve_app.model.plan import Sentence
from serve_app.model.span_audio import SpanAudio

RATE, SEAM = 48000, 480


def _fed(said: SpanAudio, audio: np.ndarray, piece: int) -> list[np.ndarray]:
    return [said.feed(audio[start : start + piece]) for start in range(0, len(audio), piece)] + [said.finish()]


def test_a_stretched_sentence_first_audio_is_long_enough_to_crossfade_and_nothing_is_lost() -> None:
    audio = (np.sin(np.arange(RATE) / 7) * 0.3).astype(np.float32)
    pieces = _fed(SpanAudio(Sentence("x", None, 2, 100, speed=2.0, pause_after=100), RATE, SEAM), audio, 1920)
    first = next(piece for piece in pieces if len(piece))
    assert len(first) >= SEAM
    joined = np.concatenate(pieces)
    assert np.array_equal(joined[:-100], stretch(audio, 2.0, RATE)) and not joined[-100:].any()


def test_a_sentence_at_its_own_rate_goes_out_as_it_comes() -> None:
    audio = np.ones(3000, dtype=np.float32)
    pieces = _fed(SpanAudio(Sentence("x", None, 2, 100), RATE, SEAM), audio, 100)
    assert [len(piece) for piece in pieces] == [100] * 30 + [0]
