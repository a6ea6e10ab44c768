"""What the tests and the benchmarks share (``benchmarks/common.py`` imports it): plain functions, no pytest."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import soundfile as sf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tone_wav(path: Path, seconds: float = 2.0, hz: float = 220.0, glide_hz_per_s: float = 0.0) -> Path:
    """A tone at 16 kHz (rising by ``glide_hz_per_s``), written to ``path``: any decodable audio will do as a
    reference recording."""
    t = np.arange(round(seconds * 16000)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * (hz + glide_hz_per_s * t) * t), 16000)
    return path
