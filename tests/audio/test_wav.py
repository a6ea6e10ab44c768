"""The WAV containers: one streaming header before chunks, exact sizes for a whole file, PCM16 that clips."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from serve_app.audio import wav


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
