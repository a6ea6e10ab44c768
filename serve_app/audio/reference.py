"""Uploaded reference audio: bytes in any format libsndfile reads -> mono float32 at the model's rate.

The upload is decoded from memory; its file name is never looked at, let alone used as a path.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from serve_app.errors import InvalidField, UnsupportedMedia


def decode_reference(data: bytes, target_rate: int, max_seconds: float, field: str) -> np.ndarray:
    """Decode, mix down to mono and resample; refuse what is not audio or is too long or empty."""
    mono, rate = decode_mono(data, max_seconds, field)
    return resample(mono, rate, target_rate)


def resample(mono: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_mono(data: bytes, max_seconds: float, field: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate; refuse what is not audio or is too long or empty."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            seconds = source.frames / source.samplerate
            if seconds > max_seconds:
                raise InvalidField(f"reference audio is {seconds:.1f} s long; the limit is {max_seconds:g} s", field)
            samples = source.read(dtype="float32", always_2d=True)
            rate = source.samplerate
    except sf.LibsndfileError as exc:
        reason = exc.error_string.rstrip(".").lower()  # libsndfile's words, without its repr of our buffer
        raise UnsupportedMedia(f"{field} is not audio this service can decode: {reason}", field) from None
    if samples.shape[0] == 0:
        raise InvalidField("reference audio contains no samples", field)
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise InvalidField("reference audio contains NaN or infinite samples", field)
    return mono, rate
