"""Pure audio helpers: the streaming WAV header, PCM16, whole files, reference decoding."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import soundfile as sf

from serve_app.audio import wav
from serve_app.audio.decode import AudioBounds, decode_reference
from serve_app.errors import InvalidField, UnsupportedMedia

# LimitsConfig's defaults: 60 s, 8 channels, 192 kHz, 60 s at 48 kHz stereo, 10 s to decode.
BOUNDS = AudioBounds(max_seconds=60, max_channels=8, max_sample_rate=192_000, max_samples=5_760_000, timeout_s=10)


def within(seconds: float) -> AudioBounds:
    return dataclasses.replace(BOUNDS, max_seconds=seconds)


def test_streaming_header_plus_chunks_is_one_readable_file() -> None:
    chunks = [np.full(100, 0.5, dtype=np.float32), np.full(50, -0.25, dtype=np.float32)]
    body = wav.streaming_header(24000) + b"".join(wav.pcm16(c) for c in chunks)
    data, rate = sf.read(io.BytesIO(body), dtype="int16")
    assert rate == 24000 and len(data) == 150
    assert data[0] == round(0.5 * 32767) and data[-1] == round(-0.25 * 32767)


def test_pcm16_clips_instead_of_wrapping() -> None:
    values = np.frombuffer(wav.pcm16(np.array([2.0, -2.0, np.float32(1.0)])), dtype="<i2")
    assert values.tolist() == [32767, -32767, 32767]


def test_wav_file_has_exact_sizes() -> None:
    body = wav.wav_file(np.zeros(441, dtype=np.float32), 44100)
    assert int.from_bytes(body[4:8], "little") == len(body) - 8
    assert sf.info(io.BytesIO(body)).frames == 441


def encoded(samples: np.ndarray, rate: int, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, **kwargs)
    return buffer.getvalue()


def test_reference_is_mixed_down_and_resampled() -> None:
    stereo = np.stack([np.ones(48000) * 0.5, np.zeros(48000)], axis=1)
    mono = decode_reference(encoded(stereo, 48000, format="WAV"), 16000, within(10), "prompt_audio")
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 16000) <= 1
    assert np.allclose(mono[2000:-2000], 0.25, atol=1e-2)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_reference_in_other_containers(fmt: str) -> None:
    data = encoded(np.zeros(16000), 16000, format=fmt)
    assert len(decode_reference(data, 16000, within(10), "prompt_audio")) == 16000


def test_reference_too_long_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidField, match="limit is 1 s"):
        decode_reference(encoded(np.zeros(32000), 16000, format="WAV"), 16000, within(1), "prompt_audio")


def test_reference_that_is_not_audio() -> None:
    with pytest.raises(UnsupportedMedia) as raised:
        decode_reference(b"%PDF-1.7 definitely not audio", 16000, within(10), "prompt_audio")
    assert raised.value.field == "prompt_audio"
    assert "BytesIO" not in raised.value.message


def test_reference_without_samples() -> None:
    with pytest.raises(InvalidField, match="no samples"):
        decode_reference(encoded(np.zeros(0), 16000, format="WAV"), 16000, within(10), "prompt_audio")


def test_browser_recordings_decode_through_ffmpeg() -> None:
    """MediaRecorder's WebM/Opus is no libsndfile format: FFmpeg (PyAV) takes over."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.full((1, 48000), 0.25, np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    mono = decode_reference(buffer.getvalue(), 16000, within(10), "prompt_audio")
    assert abs(len(mono) - 16000) < 400
    with pytest.raises(InvalidField, match=r"limit is 0\.5 s"):
        decode_reference(buffer.getvalue(), 16000, within(0.5), "prompt_audio")
