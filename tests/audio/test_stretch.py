"""The speaking-rate stretcher on its own: length, pitch, and no clicks where chunks meet."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.audio.stretch import MAX_SPEED, MIN_SPEED, check_speed, stretch, stretcher
from serve_app.errors import BadRequest

RATE = 44100
CHUNK = 1470  # the tiny VoxCPM1.5's frames per generation step


def voiced(seconds: float = 2.0, f0: float = 150.0) -> np.ndarray:
    """A harmonic, vowel-like signal: what matters for pitch and for clicks."""
    t = np.arange(int(seconds * RATE)) / RATE
    return sum((0.3 / k) * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8)).astype(np.float32)


def fundamental(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    freqs = np.fft.rfftfreq(len(signal), 1 / RATE)
    band = (freqs > 60) & (freqs < 400)
    return float(freqs[band][spectrum[band].argmax()])


def streamed(signal: np.ndarray, speed: float) -> tuple[np.ndarray, list[int]]:
    """The stretched signal fed chunk by chunk, and where in it each fed chunk's output began."""
    stage, pieces, starts, length = stretcher(speed, RATE), [], [], 0
    for start in range(0, len(signal), CHUNK):
        starts.append(length)
        piece = stage.feed(signal[start : start + CHUNK])
        pieces.append(piece)
        length += len(piece)
    pieces.append(stage.finish())
    return np.concatenate(pieces), starts


@pytest.mark.parametrize("speed", [MIN_SPEED, 0.8, 1.25, MAX_SPEED])
def test_length_is_exact_and_pitch_is_kept(speed: float) -> None:
    signal = voiced()
    out, _ = streamed(signal, speed)
    assert len(out) == round(len(signal) / speed)
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert fundamental(middle) == pytest.approx(150.0, abs=3)


@pytest.mark.parametrize("speed", [MIN_SPEED, 1.5, MAX_SPEED])
def test_no_click_where_chunks_meet(speed: float) -> None:
    signal = voiced()
    out, starts = streamed(signal, speed)
    steps = np.abs(np.diff(out))
    largest_in = np.abs(np.diff(signal)).max()
    assert steps.max() < 1.5 * largest_in
    seams = [s for s in starts if 0 < s < len(steps)]
    assert max(steps[s - 1] for s in seams) < 1.5 * largest_in


def test_a_whole_file_is_the_stream_in_one_go() -> None:
    signal = voiced(1.0)
    assert len(stretch(signal, 1.5, RATE)) == round(len(signal) / 1.5)
    assert np.array_equal(stretch(signal, 1.0, RATE), signal)


@pytest.mark.parametrize("speed", [0.0, 0.25, 0.49, 2.01, 4.0, float("nan")])
def test_out_of_range_is_refused_stating_the_range(speed: float) -> None:
    with pytest.raises(BadRequest) as refused:
        check_speed(speed)
    assert refused.value.field == "speed" and "between 0.5 and 2.0" in refused.value.message
