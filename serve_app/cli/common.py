"""What every command of ``voxcpm-serve`` shares: exit codes, errors carrying the server's words, HTTP calls,
the progress line and the audio player."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import requests

EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_SERVER, EXIT_PLAYBACK = 2, 3, 4, 5, 6
# `say`'s options that are request fields of the same name, over HTTP and in the WebSocket's init
SETTINGS = ("model", "voice_id", "adapter", "sample_rate", "cfg_value", "inference_timesteps", "max_len", "seed")


def auth(args: argparse.Namespace) -> dict[str, str]:
    """The API key's header (``--api-key`` or $VOXCPM_SERVE_API_KEY), when one is given."""
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def checked(response: requests.Response) -> requests.Response:
    """The response, or a CliError carrying the server's own words."""
    if response.ok:
        return response
    try:
        error = response.json()["error"]
        message = f"{error['message']}" + (f" (field: {error['field']})" if error.get("field") else "")
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason
    code = EXIT_REFUSED if response.status_code < 500 else EXIT_SERVER
    raise CliError(f"HTTP {response.status_code}: {message}", code)


def call(method: str, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return checked(requests.request(method, url, timeout=timeout, **kwargs))
    except requests.ConnectionError:
        raise CliError(f"cannot reach {url.split('/api')[0].split('/health')[0]}", EXIT_UNREACHABLE) from None


class Progress:
    """One status line on stderr while audio arrives (only on a terminal), and a summary at the end."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._live = sys.stderr.isatty() and not quiet
        self.started = time.perf_counter()
        self.first_audio: float | None = None
        self.audio_s = 0.0  # known for wav and pcm
        self.bytes = 0

    def add(self, nbytes: int, audio_s: float) -> None:
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.started
        self.audio_s += audio_s
        self.bytes += nbytes
        if self._live:
            got = f"{self.audio_s:6.1f} s of audio" if self.audio_s else f"{self.bytes / 1024:8.0f} KiB"
            print(f"\r{got} in {time.perf_counter() - self.started:5.1f} s", end="", file=sys.stderr, flush=True)

    def done(self, what: str) -> None:
        if self._live:
            print("\r\033[K", end="", file=sys.stderr)
        if self._quiet:
            return
        elapsed = time.perf_counter() - self.started
        got = f"{self.audio_s:.2f} s of audio" if self.audio_s else f"{self.bytes} bytes"
        rtf = f", real-time factor {elapsed / self.audio_s:.2f}" if self.audio_s else ""
        first = f", first bytes after {1e3 * self.first_audio:.0f} ms" if self.first_audio is not None else ""
        print(f"{what}: {got} in {elapsed:.2f} s{first}{rtf}", file=sys.stderr)


def pcm_player(sample_rate: int) -> Any:
    """A PortAudio output stream (a context manager that starts and stops it)."""
    try:
        import sounddevice
    except (ImportError, OSError):  # not installed, or PortAudio missing
        raise CliError("--play needs sounddevice and PortAudio: pip install sounddevice", EXIT_PLAYBACK) from None
    try:
        return sounddevice.RawOutputStream(samplerate=sample_rate, channels=1, dtype="int16")
    except Exception as exc:  # noqa: BLE001 - PortAudio raises its own types when no device exists
        raise CliError(f"no audio output device: {exc}", EXIT_PLAYBACK) from None
