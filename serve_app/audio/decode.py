"""Uploaded reference audio: bytes in one of the accepted containers (``containers.py``) -> mono float32.

An upload is recognised by its first bytes as one of a short list of audio containers before anything
else reads it; what is not on the list is refused at once (415). libsndfile decodes it first where it may
(WAV, FLAC, Ogg, MP3, AIFF, CAF), and only if it then says it read that container; FFmpeg through PyAV
decodes the rest, such as the WebM/Opus or MP4/AAC a browser's MediaRecorder produces, with the container's
demuxer forced (nothing is probed) and no protocol allowed: it reads the bytes sent and nothing else.

A few kilobytes may decode to gigabytes (a silent FLAC at 8 channels and 655 kHz compresses a
thousandfold), so what an upload may decode to is bounded twice: from its header, before any sample
is decoded, and again block by block as it decodes, so a header that lies is cut off at the first
block past a bound. Each block is mixed down to mono as it arrives: the channels never exist whole
in memory, and the mono buffer never exceeds the sample budget. Decoding also stops at a deadline,
and when the client has left: checked at every block and at every read FFmpeg makes, and by PyAV's
interrupt callback wherever FFmpeg waits, so a demuxer reading on without producing a frame is stopped
too. Decodes run in a bounded pool of their own (``DecodePool``).

The upload is decoded from memory; its file name is never looked at, let alone used as a path.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import av
import numpy as np
import soundfile as sf
import soxr

from serve_app.audio.containers import AudioContainer, sniff
from serve_app.errors import BadRequest, InvalidField, Overloaded, PayloadTooLarge, UnsupportedMedia

# libsndfile decodes this many frames at a time into one reused buffer: 2 MiB at 8 channels.
BLOCK_FRAMES = 65536
# The frame count libsndfile reports when a header leaves it out (a FLAC streamed without its total):
# such a file is checked only as it decodes.
UNKNOWN_FRAMES = 2**63 - 1
# Decodes that may wait for a thread of the pool, per thread, before uploads are refused (503).
WAITING_PER_WORKER = 4
# FFmpeg's container options: no protocol is called this, so every nested open fails (an ffconcat entry, a
# playlist's segment, an RTP session, a MOV's external data reference), should a forced demuxer try one.
NO_PROTOCOLS = {"protocol_whitelist": "none"}

T = TypeVar("T")


@dataclass(frozen=True)
class AudioBounds:
    """What one uploaded recording may be and decode to (the ingress builds it from ``LimitsConfig``)."""

    max_seconds: float  # longer: 422, the client's recording is merely too long
    max_channels: int  # more, a higher rate or more samples: 413, an upload too costly to decode
    max_sample_rate: int
    max_samples: int  # decoded frames x channels
    timeout_s: float  # decoding longer than this: 413


class DecodePool:
    """Threads of their own that decode uploads: one pool per ingress replica, ``workers`` threads.

    A decode may hold its thread until its deadline. In the default executor it would hold a thread that every
    ``asyncio.to_thread`` of the replica shares (voice listings, store reads), so a few slow uploads stalled
    them all; here uploads wait only for each other, and past ``WAITING_PER_WORKER`` waiting per thread the
    next is refused at once (503, Retry-After) rather than queued for longer than its client waits.
    """

    def __init__(self, workers: int) -> None:
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="upload-decode")
        # held from submission until the thread is done with it (a cancelled request's decode included)
        self._slots = threading.BoundedSemaphore(workers * (1 + WAITING_PER_WORKER))

    async def run(self, work: Callable[[], T], field: str) -> T:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"too many uploads are decoding; send {field} again shortly", field)
        try:
            future = self._threads.submit(contextvars.copy_context().run, work)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)  # cancelled here: a decode not yet started never starts


async def decode_upload(
    data: bytes, bounds: AudioBounds, field: str, pool: DecodePool, target_rate: int | None = None
) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate (``target_rate``, when given), decoded in ``pool``.

    What is no accepted container is refused here, before it takes a place in the pool. When the awaiting
    request is cancelled (its client left), the thread is told to stop at its next block or read instead of
    decoding on for nobody.
    """
    sniff(data, field)
    cancelled = threading.Event()

    def decode() -> tuple[np.ndarray, int]:
        if target_rate is None:
            return decode_mono(data, bounds, field, cancelled)
        return decode_reference(data, target_rate, bounds, field, cancelled), target_rate

    try:
        return await pool.run(decode, field)
    except asyncio.CancelledError:
        cancelled.set()
        raise


def decode_reference(
    data: bytes, target_rate: int, bounds: AudioBounds, field: str, cancelled: threading.Event | None = None
) -> np.ndarray:
    """Decode, mix down to mono and resample; refuse what is not audio, out of bounds or empty."""
    mono, rate = decode_mono(data, bounds, field, cancelled)
    return resample(mono, rate, target_rate)


def resample(mono: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_mono(
    data: bytes, bounds: AudioBounds, field: str, cancelled: threading.Event | None = None
) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate; refuse what is not audio, out of bounds or empty.

    Raises ``concurrent.futures.CancelledError`` at the next block or read once ``cancelled`` is set.
    """
    container = sniff(data, field)
    decoding = _Decoding(bounds, field, cancelled)
    reason = None
    if container.libsndfile:
        try:
            _libsndfile(data, container, decoding)
        except sf.LibsndfileError as exc:
            reason = exc.error_string.rstrip(".").lower()  # libsndfile's words, without its repr of our buffer
        except _NotThatContainer as exc:
            reason = str(exc)
        else:
            return decoding.result()
    # outside the handler, whose traceback would keep what libsndfile decoded alive through FFmpeg's decode
    decoding = _Decoding(bounds, field, cancelled, decoding.deadline)
    try:
        _ffmpeg(data, container, decoding)
    except (av.FFmpegError, ValueError) as exc:
        decoding.check()  # a read refused for the deadline or a client gone wins, whatever FFmpeg made of it
        reason = reason or str(getattr(exc, "strerror", None) or exc).rstrip(".").lower()
        message = f"{field} is not {container.name} audio this service can decode: {reason}"
        raise UnsupportedMedia(message, field) from None
    decoding.check()  # FFmpeg may take a refused read for the end of the file
    return decoding.result()


class MonoBuffer:
    """Mono samples appended block by block to one array grown by doubling, up to ``limit``: linear in
    what was decoded however small the blocks (FFmpeg may decode thousands of one-sample frames).

    The array grows and shrinks in place (``realloc``, which moves large blocks without copying them),
    so it is never held twice; no view of it exists until ``samples``, the last call.
    """

    def __init__(self, capacity: int, limit: int) -> None:
        self._data = np.empty(min(capacity, limit), np.float32)
        self._size = 0
        self._limit = limit

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Samples the buffer holds room for."""
        return len(self._data)

    def append(self, block: np.ndarray) -> None:
        end = self._size + len(block)
        if end > len(self._data):
            self._data.resize(max(end, min(2 * len(self._data), self._limit)), refcheck=False)
        self._data[self._size : end] = block
        self._size = end

    def samples(self) -> np.ndarray:
        self._data.resize(self._size, refcheck=False)  # a header that promised more frees the rest
        return self._data


class _Decoding:
    """One upload's decode: its bounds checked from the header, then again after every block."""

    def __init__(
        self, bounds: AudioBounds, field: str, cancelled: threading.Event | None, deadline: float | None = None
    ) -> None:
        self.bounds = bounds
        self.field = field
        self.cancelled = cancelled
        self.deadline = time.monotonic() + bounds.timeout_s if deadline is None else deadline
        self.rate = 0
        self.samples = 0  # decoded so far, frames x channels
        self.mono = MonoBuffer(0, bounds.max_samples)

    def start(self, channels: int, rate: int, frames: int | None) -> None:
        """Refuse from the header (``frames``: none when it does not say), before decoding a sample."""
        self._check_format(channels, rate)
        self.rate = rate
        if frames is not None:
            self._check_size(frames, frames * channels, "")
            self.mono = MonoBuffer(frames, self.bounds.max_samples)  # the header is usually right

    def add(self, mono: np.ndarray, channels: int, rate: int) -> None:
        """Keep a decoded block (already mixed down from ``channels``), or stop: the client left, the
        deadline passed, or the decoded audio went past a bound its header kept within."""
        self.check()
        self._check_format(channels, rate)
        if not self.samples:
            self.rate = rate  # FFmpeg's decoder has the last word (the resampler refuses a rate that changes)
        self.samples += len(mono) * channels
        self._check_size(len(self.mono) + len(mono), self.samples, "at least ")
        if not np.isfinite(mono).all():
            raise InvalidField("reference audio contains NaN or infinite samples", self.field)
        self.mono.append(mono)

    def check(self) -> None:
        """Stop if the client left or the deadline passed."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise CancelledError(f"{self.field}: the request was cancelled while its audio decoded")
        if time.monotonic() > self.deadline:
            raise PayloadTooLarge(
                f"{self.field} took longer than {self.bounds.timeout_s:g} s to decode; send a shorter or simpler "
                "recording",
                self.field,
            )

    def result(self) -> tuple[np.ndarray, int]:
        if not len(self.mono):
            raise InvalidField("reference audio contains no samples", self.field)
        return self.mono.samples(), self.rate

    def _check_format(self, channels: int, rate: int) -> None:
        bounds, field = self.bounds, self.field
        if channels > bounds.max_channels:
            raise PayloadTooLarge(f"{field} has {channels} channels; the limit is {bounds.max_channels}", field)
        if rate > bounds.max_sample_rate:
            raise PayloadTooLarge(f"{field} is sampled at {rate} Hz; the limit is {bounds.max_sample_rate} Hz", field)
        if rate <= 0:
            raise BadRequest(f"{field} declares a sample rate of {rate} Hz", field)

    def _check_size(self, frames: int, samples: int, at_least: str) -> None:
        """The duration first, so a recording that is merely too long keeps its 422."""
        bounds, field = self.bounds, self.field
        if frames / self.rate > bounds.max_seconds:
            raise InvalidField(
                f"reference audio is {at_least}{frames / self.rate:.1f} s long; the limit is {bounds.max_seconds:g} s",
                field,
            )
        if samples > bounds.max_samples:
            raise PayloadTooLarge(
                f"{field} decodes to {at_least}{samples:,} samples (frames x channels); the limit is "
                f"{bounds.max_samples:,}",
                field,
            )


class _NotThatContainer(Exception):
    """libsndfile read the bytes as another format than the one they start with: refused like its own errors."""


def _libsndfile(data: bytes, container: AudioContainer, decoding: _Decoding) -> None:
    """libsndfile cannot be told which format to read (except headerless RAW): it guesses, and what it
    guessed is checked against the container the bytes start with before a sample is read."""
    with sf.SoundFile(io.BytesIO(data)) as source:
        if source.format not in container.libsndfile:
            raise _NotThatContainer(f"libsndfile reads it as {source.format}, not {container.name}")
        channels, rate = source.channels, source.samplerate
        decoding.start(channels, rate, None if source.frames == UNKNOWN_FRAMES else source.frames)
        block = np.empty((min(BLOCK_FRAMES, source.frames), channels), np.float32)
        while len(read := source.read(out=block)):
            decoding.add(read.mean(axis=1, dtype=np.float32), channels, rate)


class _Input:
    """The upload as FFmpeg reads it, from memory: every read first checks the deadline and the client, so a
    demuxer reading on without producing a frame (or resyncing through junk) is stopped as a decode is."""

    def __init__(self, data: bytes, decoding: _Decoding) -> None:
        self._bytes = io.BytesIO(data)  # shares ``data``'s buffer: no copy
        self._decoding = decoding

    def read(self, size: int = -1) -> bytes:
        self._decoding.check()
        return self._bytes.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._bytes.seek(offset, whence)

    def tell(self) -> int:
        return self._bytes.tell()


def _ffmpeg(data: bytes, container: AudioContainer, decoding: _Decoding) -> None:
    """Through FFmpeg with the container's demuxer forced and no protocol allowed, one decoded frame at a
    time (its stream's header gives no reliable length). PyAV's ``timeout`` installs an interrupt callback,
    which FFmpeg polls where it waits (stream probing, any I/O) rather than at a frame."""
    source = _Input(data, decoding)
    timeout = max(decoding.deadline - time.monotonic(), 1e-3)
    with av.open(source, format=container.demuxer, container_options=NO_PROTOCOLS, timeout=timeout) as media:
        if not media.streams.audio:
            raise ValueError("it holds no audio stream")
        stream = media.streams.audio[0]
        codec = stream.codec_context
        if codec is None:
            raise ValueError("FFmpeg has no decoder for this stream")  # not audio this service can decode: 415
        decoding.start(codec.channels, codec.sample_rate, None)
        to_mono = av.AudioResampler(format="flt", layout="mono")
        for frame in media.decode(stream):
            for converted in to_mono.resample(frame):
                decoding.add(converted.to_ndarray().reshape(-1), frame.layout.nb_channels, frame.sample_rate)
