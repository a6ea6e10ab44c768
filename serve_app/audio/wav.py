"""WAV for streaming and for whole files.

A streamed answer starts with one RIFF/WAVE header whose RIFF and data sizes are 0xFFFFFFFF
("unknown length", as OpenAI's speech API streams), followed by PCM16 frames, so the chunks
concatenated form one playable file. libsndfile cannot write such a header (it seeks back to
patch sizes), hence the 44 bytes below; whole files go through soundfile.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

UNKNOWN_SIZE = 0xFFFFFFFF
_PCM = 1
_BITS = 16


def streaming_header(sample_rate: int, channels: int = 1) -> bytes:
    """The 44-byte header of a PCM16 WAV of unknown length."""
    block_align = channels * _BITS // 8
    return b"".join(
        (
            b"RIFF",
            struct.pack("<I", UNKNOWN_SIZE),
            b"WAVE",
            b"fmt ",
            struct.pack("<IHHIIHH", 16, _PCM, channels, sample_rate, sample_rate * block_align, block_align, _BITS),
            b"data",
            struct.pack("<I", UNKNOWN_SIZE),
        )
    )


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped beyond) as little-endian signed 16-bit PCM."""
    scaled = np.clip(samples, -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype("<i2").tobytes()


def wav_file(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete PCM16 WAV with exact sizes."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
