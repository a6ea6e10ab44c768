"""Speaking rate (``speed``): pitch-preserving time-stretch of the model's audio while it streams.

VoxCPM has no rate control, so the rate is changed after generation, on the model's float32 audio
before encoding, by one stretcher per answer fed chunk by chunk. The model already crossfades its
sentence seams, so the stretcher sees one continuous signal and adds no seam of its own.

The library is Rubber Band (R3 "finer" engine, real-time mode, short window, formants preserved)
through ``pylibrb``, a binding that ships the library in its wheel. Compared on a voiced
150 Hz harmonic test signal fed in 33 ms chunks, as the ingress feeds it (``benchmarks/stretch.py``,
results in ``benchmarks/results/stretch_libraries.md``):

- Rubber Band R3 real-time, short window: pitch and harmonics kept from 0.5x to 2x, length exact
  (after the trim below); 12-26 ms CPU per audio second at 44.1/48 kHz on one core; holds 67-100 ms
  of input before its first output. The standard window doubled both cost and latency.
- Rubber Band R2 ("faster") real-time: half the CPU, but at 1.5x and 2x the harmonics smeared
  (harmonic-to-noise ratio from 13 dB to -1 / -5 dB, the fundamental read an octave up at 2x).
- audiotsm (WSOLA; phase vocoder): about the same cost and latency, streams, but unmaintained
  since 2017, lengths off by 1 %, and WSOLA's known weakness on speech (doubled or skipped pitch
  periods where the pitch moves) is what Rubber Band's phase-locked engine avoids; its phase
  vocoder put sample jumps twice the input's into the output (clicks).
- pyrubberband, pytsmod, libtsm, pedalboard's ``time_stretch``: whole-buffer only (pyrubberband
  shells out to the ``rubberband`` CLI per call); they cannot stretch a stream as it arrives.

Rubber Band is GPL-2.0-or-later (commercial licences exist): shipping this service in an image
ships it too, with the usual GPL obligations for that image.

The range is 0.5-2.0, narrower than OpenAI's 0.25-4.0: past 2x, short consonants (30-60 ms)
become shorter than the stretcher's analysis window and smear or drop out; below 0.5x every
window repeats more than twice and vowels turn metallic. Players and podcast apps stop at the
same bounds for speech. Values outside are refused (400) rather than clamped.
"""

from __future__ import annotations

import numpy as np
import pylibrb

from serve_app.errors import BadRequest

MIN_SPEED = 0.5
MAX_SPEED = 2.0
_OPTIONS = (
    pylibrb.Option.PROCESS_REALTIME
    | pylibrb.Option.ENGINE_FINER
    | pylibrb.Option.WINDOW_SHORT
    | pylibrb.Option.FORMANT_PRESERVED
)
_BLOCK = 8192  # frames per process() call: whole files go in pieces, within the library's buffers


def check_speed(speed: float, field: str = "speed") -> None:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise BadRequest(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED} (got {speed}): beyond that range "
            "time-stretched speech loses consonants or turns metallic",
            field,
        )


class Stretcher:
    """One answer's audio at ``speed`` times the rate, same pitch; ``feed`` chunks, then ``finish``.

    Rubber Band's real-time mode does no delay compensation: the input starts with its preferred
    padding and the output's first ``start_delay`` frames are dropped, and ``finish`` trims or pads
    the tail so the answer lasts exactly input / speed.
    """

    def __init__(self, speed: float, sample_rate: int) -> None:
        self._speed = speed
        self._rb = pylibrb.RubberBandStretcher(sample_rate, 1, _OPTIONS, initial_time_ratio=1.0 / speed)
        self._rb.set_max_process_size(_BLOCK)
        self._rb.process(np.zeros((1, self._rb.get_preferred_start_pad()), dtype=np.float32))
        self._to_drop = self._rb.get_start_delay()
        self._frames_in = 0
        self._frames_out = 0

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        self._frames_in += len(chunk)
        pieces = []
        for start in range(0, len(chunk), _BLOCK):
            self._rb.process(np.ascontiguousarray(chunk[None, start : start + _BLOCK]))
            pieces.append(self._retrieve())
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        self._rb.process(np.zeros((1, 0), dtype=np.float32), final=True)
        tail = self._retrieve()
        missing = round(self._frames_in / self._speed) - self._frames_out
        if missing < 0:
            return tail[: max(0, len(tail) + missing)]
        return np.concatenate([tail, np.zeros(missing, dtype=np.float32)])

    def _retrieve(self) -> np.ndarray:
        out = self._rb.retrieve_available()[0]
        dropped = min(self._to_drop, len(out))
        self._to_drop -= dropped
        out = out[dropped:]
        self._frames_out += len(out)
        return out


class Unchanged:
    """``speed`` 1.0: the audio as it is, at no cost."""

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        return chunk

    def finish(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


def stretcher(speed: float, sample_rate: int) -> Stretcher | Unchanged:
    return Unchanged() if speed == 1.0 else Stretcher(speed, sample_rate)


def stretch(samples: np.ndarray, speed: float, sample_rate: int) -> np.ndarray:
    """A whole utterance at ``speed`` (for ``/api/tts``): the streaming path, in one go."""
    stage = stretcher(speed, sample_rate)
    return np.concatenate([stage.feed(samples), stage.finish()])
