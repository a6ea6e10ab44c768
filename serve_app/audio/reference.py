"""Uploaded reference audio: bytes in any format libsndfile or FFmpeg reads -> mono float32.

libsndfile first (WAV, FLAC, OGG, MP3, any bit depth); FFmpeg through PyAV for the rest, such as
the WebM/Opus or MP4/AAC a browser's MediaRecorder produces.

The upload is decoded from memory; its file name is never looked at, let alone used as a path.
"""

from __future__ import annotations

import io

import av
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
        samples, rate = _libsndfile(data, max_seconds, field)
    except sf.LibsndfileError as exc:
        reason = exc.error_string.rstrip(".").lower()  # libsndfile's words, without its repr of our buffer
        try:
            samples, rate = _ffmpeg(data, max_seconds, field)
        except (av.FFmpegError, ValueError, IndexError):
            raise UnsupportedMedia(f"{field} is not audio this service can decode: {reason}", field) from None
    if samples.shape[0] == 0:
        raise InvalidField("reference audio contains no samples", field)
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise InvalidField("reference audio contains NaN or infinite samples", field)
    return mono, rate


def _too_long(seconds: float, max_seconds: float, field: str) -> None:
    if seconds > max_seconds:
        raise InvalidField(f"reference audio is {seconds:.1f} s long; the limit is {max_seconds:g} s", field)


def _libsndfile(data: bytes, max_seconds: float, field: str) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as source:
        _too_long(source.frames / source.samplerate, max_seconds, field)  # before reading the samples
        return source.read(dtype="float32", always_2d=True), source.samplerate


def _ffmpeg(data: bytes, max_seconds: float, field: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 through FFmpeg, stopping as soon as the limit is passed."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="flt", layout="mono")
        pieces, rate = [], stream.rate or stream.codec_context.sample_rate
        for frame in container.decode(stream):
            for converted in to_float.resample(frame):
                pieces.append(converted.to_ndarray().reshape(-1))
            _too_long(sum(map(len, pieces)) / rate, max_seconds, field)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return samples[:, None], rate
