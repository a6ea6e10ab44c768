"""Uploaded reference audio decoded within its bounds: formats, mixing down, resampling, audio bombs, headers
that lie, many tiny frames, deadlines, cancellation, the decode pool's bound and its isolation from other
threads; the bomb refused by the real service at no cost to the ingress. Which containers are accepted at
all, and the deadline while FFmpeg reads without decoding: test_containers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import requests
import soundfile as sf

from serve_app.audio import decode
from serve_app.audio.decode import (
    BLOCK_FRAMES,
    WAITING_PER_WORKER,
    DecodePool,
    MonoBuffer,
    decode_mono,
    decode_reference,
    decode_upload,
)
from serve_app.errors import BadRequest, InvalidField, Overloaded, PayloadTooLarge, ServiceError, UnsupportedMedia
from tests.conftest import BOUNDS, encoded, error_of, within


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


FIELD = "prompt_audio"


BOMB_RATE = 655_340  # FLAC's highest rate is 655,350 Hz


def written(frames: int, rate: int, channels: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    """Silence written block by block: a bomb's samples never exist whole here either."""
    buffer = io.BytesIO()
    block = np.zeros((min(frames, BLOCK_FRAMES), channels), np.int16)
    with sf.SoundFile(buffer, "w", rate, channels, subtype, format=fmt) as out:
        for start in range(0, frames, BLOCK_FRAMES):
            out.write(block[: frames - start])
    return buffer.getvalue()


def bomb(seconds: int = 20) -> bytes:
    """7.1 channels at 655,340 Hz of silence: about 100 KB that decode to 419 MB per 20 s as float32."""
    return written(BOMB_RATE * seconds, BOMB_RATE, 8)


def streamed(flac: bytes) -> bytes:
    """The FLAC without its total sample count (zero: unknown), as an encoder writing to a pipe leaves it."""
    data = bytearray(flac)
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, depth, then 36 bits of total
    data[18:26] = (fields & ~(2**36 - 1)).to_bytes(8, "big")
    return bytes(data)


def wav_claiming(wav: bytes, data_bytes: int) -> bytes:
    """The WAV with RIFF and data sizes of ``data_bytes`` (0xFFFFFFFF: a streaming header)."""
    riff = 0xFFFFFFFF if data_bytes == 0xFFFFFFFF else data_bytes + 36
    assert wav[36:40] == b"data"
    return wav[:4] + struct.pack("<I", riff) + wav[8:40] + struct.pack("<I", data_bytes) + wav[44:]


def matroska_pcm(samples: int, rate: int = 16000, per_frame: int = 1) -> bytes:
    """Mono PCM in Matroska (no libsndfile format), ``per_frame`` samples to a frame (by default one: 8 bytes
    of file per frame FFmpeg decodes). Sample k is (k mod 100) / 32768."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        for start in range(0, samples, per_frame):
            values = np.arange(start, min(start + per_frame, samples)) % 100
            frame = av.AudioFrame.from_ndarray(values[None].astype(np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
    return buffer.getvalue()


def caf_at_zero_hz() -> bytes:
    """A CAF file saying 0 Hz: libsndfile refuses it, FFmpeg opens it."""
    data = written(16000, 16000, 1, "CAF")
    at = data.index(b"desc") + 12  # the chunk's sample rate, a big-endian double
    return data[:at] + struct.pack(">d", 0.0) + data[at + 8 :]


@dataclasses.dataclass
class Peak:
    bytes: int = 0


@contextlib.contextmanager
def peak_memory() -> Iterator[Peak]:
    """The peak of what Python and numpy allocated inside the block (FFmpeg's own buffers are not traced)."""
    peak = Peak()
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_the_audio_bomb_is_refused_from_its_header() -> None:
    data = bomb()
    with peak_memory() as peak, pytest.raises(PayloadTooLarge) as refused:
        decode_mono(data, BOUNDS, FIELD)
    assert refused.value.field == FIELD and "655340 Hz; the limit is 192000 Hz" in refused.value.message
    assert peak.bytes < len(data)  # nothing decoded (it used to take 470 MB)


@pytest.mark.parametrize(
    ("fmt", "channels", "rate", "seconds", "status", "words"),
    [
        ("WAV", 9, 16000, 1, 413, "has 9 channels; the limit is 8"),
        ("FLAC", 1, 200_000, 1, 413, "sampled at 200000 Hz; the limit is 192000 Hz"),
        ("FLAC", 6, 96000, 20, 413, "decodes to 11,520,000 samples (frames x channels); the limit is 5,760,000"),
        ("FLAC", 1, 16000, 61, 422, "61.0 s long; the limit is 60 s"),
        ("FLAC", 2, 48000, 61, 422, "61.0 s long; the limit is 60 s"),  # past the budget too: still merely long
    ],
)
def test_out_of_bounds_headers_are_refused_before_decoding(
    fmt: str, channels: int, rate: int, seconds: int, status: int, words: str
) -> None:
    data = written(rate * seconds, rate, channels, fmt)
    with peak_memory() as peak, pytest.raises(ServiceError) as refused:
        decode_mono(data, BOUNDS, FIELD)
    assert (refused.value.status, refused.value.field) == (status, FIELD)
    assert words in refused.value.message
    assert peak.bytes < 100_000


def test_stereo_is_still_mixed_down() -> None:
    stereo = np.stack([np.full(480_000, 0.5), np.zeros(480_000)], axis=1)  # 10 s at 48 kHz
    mono, rate = decode_mono(encoded(stereo, 48000, format="WAV"), BOUNDS, FIELD)
    assert rate == 48000 and mono.shape == (480_000,) and mono.dtype == np.float32
    assert np.allclose(mono, 0.25, atol=1e-4)


def test_a_streaming_wav_header_is_measured_from_the_file() -> None:
    """0xFFFFFFFF sizes: libsndfile counts the frames the file holds, so the header checks still apply."""
    data = wav_claiming(written(32000, 16000, 1, "WAV"), 0xFFFFFFFF)
    with peak_memory() as peak, pytest.raises(PayloadTooLarge, match="decodes to 32,000 samples"):
        decode_mono(data, dataclasses.replace(BOUNDS, max_samples=16000), FIELD)
    assert peak.bytes < 100_000


def test_a_wav_claiming_fewer_frames_decodes_only_those() -> None:
    data = wav_claiming(written(32000, 16000, 1, "WAV"), 2 * 1000)
    assert len(decode_mono(data, BOUNDS, FIELD)[0]) == 1000


@pytest.mark.parametrize(
    ("channels", "rate", "seconds", "error", "words"),
    [
        (8, 192_000, 50, PayloadTooLarge, "decodes to at least"),
        (1, 16000, 61, InvalidField, "is at least 6"),  # passed within the last block
    ],
)
def test_a_header_without_a_length_is_cut_off_while_decoding(
    channels: int, rate: int, seconds: int, error: type[ServiceError], words: str
) -> None:
    data = streamed(written(rate * seconds, rate, channels))
    with peak_memory() as peak, pytest.raises(error, match=words) as refused:
        decode_mono(data, BOUNDS, FIELD)
    assert refused.value.field == FIELD
    # at most the budget as float32 and a few blocks: all of the 8-channel one would be 307 MB
    assert peak.bytes < 4 * BOUNDS.max_samples + 8 * 2**20


def test_a_streamed_flac_within_bounds_decodes() -> None:
    mono, rate = decode_mono(streamed(written(5 * 16000, 16000, 1)), BOUNDS, FIELD)
    assert (len(mono), rate) == (5 * 16000, 16000)


def test_many_tiny_ffmpeg_frames_decode() -> None:
    mono, rate = decode_mono(matroska_pcm(20_000), BOUNDS, FIELD)
    assert rate == 16000
    assert np.array_equal(mono, (np.arange(20_000) % 100 / 32768).astype(np.float32))


def test_the_mono_buffer_grows_geometrically() -> None:
    """The work per sample is bounded: capacity doubles, so 20,000 one-sample blocks move it 15 times."""
    buffer, capacities = MonoBuffer(0, limit=1_000_000), set()
    for k in range(20_000):
        buffer.append(np.full(1, k, np.float32))
        capacities.add(buffer.capacity)
    assert len(capacities) <= 16
    assert np.array_equal(buffer.samples(), np.arange(20_000, dtype=np.float32))


def test_the_mono_buffer_never_exceeds_its_limit() -> None:
    buffer = MonoBuffer(0, limit=1000)
    for _ in range(10):
        buffer.append(np.zeros(100, np.float32))
        assert buffer.capacity <= 1000


@pytest.mark.parametrize("data", [written(16000, 16000, 1, "WAV"), matroska_pcm(100)], ids=["libsndfile", "ffmpeg"])
def test_a_decode_past_its_deadline_is_413(data: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match="took longer than 1e-06 s to decode") as refused:
        decode_mono(data, dataclasses.replace(BOUNDS, timeout_s=1e-6), FIELD)
    assert refused.value.field == FIELD


@pytest.mark.parametrize("data", [written(16000, 16000, 1, "WAV"), matroska_pcm(100)], ids=["libsndfile", "ffmpeg"])
def test_a_cancelled_decode_stops_at_its_next_block(data: bytes) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(CancelledError):
        decode_mono(data, BOUNDS, FIELD, cancelled)


def test_a_rate_of_zero_is_400() -> None:
    with pytest.raises(BadRequest, match="sample rate of 0 Hz") as refused:
        decode_mono(caf_at_zero_hz(), BOUNDS, FIELD)
    assert refused.value.field == FIELD


def test_decode_upload_resamples_in_a_thread() -> None:
    data = written(48000, 48000, 2, "WAV")
    samples, rate = asyncio.run(decode_upload(data, BOUNDS, FIELD, DecodePool(1), 16000))
    assert rate == 16000 and abs(len(samples) - 16000) <= 1


def stuck_decodes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every decode blocks until the event is set, as one stuck in FFmpeg would."""
    release = threading.Event()

    def stuck(*args: object) -> tuple[np.ndarray, int]:
        release.wait(10)
        return np.zeros(1, np.float32), 16000

    monkeypatch.setattr(decode, "decode_mono", stuck)
    return release


def test_past_the_pool_and_its_queue_uploads_are_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads, each with 4 waiting: the eleventh decode is refused at once; a waiting one whose client
    left gives its place back without ever running."""
    release, data = stuck_decodes(monkeypatch), written(1600, 16000, 1, "WAV")

    async def crowd() -> None:
        pool, room = DecodePool(2), 2 + 2 * WAITING_PER_WORKER
        held = [asyncio.create_task(decode_upload(data, BOUNDS, FIELD, pool)) for _ in range(room)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await decode_upload(data, BOUNDS, FIELD, pool)
        assert refused.value.field == FIELD and refused.value.headers() == {"Retry-After": "1"}
        held[-1].cancel()
        await asyncio.sleep(0.01)
        held[-1] = asyncio.create_task(decode_upload(data, BOUNDS, FIELD, pool))
        release.set()
        assert len(await asyncio.gather(*held)) == 10

    asyncio.run(crowd())


def test_a_stuck_decode_delays_no_other_thread_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the loop's default executor cut to one thread, other work sent to it (asyncio.to_thread: a voice
    listing) is still answered at once while every decode thread is stuck."""
    release, data = stuck_decodes(monkeypatch), written(1600, 16000, 1, "WAV")

    async def meanwhile() -> float:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        pool = DecodePool(2)
        stuck = [asyncio.create_task(decode_upload(data, BOUNDS, FIELD, pool)) for _ in range(8)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.to_thread(time.sleep, 0)
        took = time.monotonic() - started
        release.set()
        await asyncio.gather(*stuck)
        return took

    assert asyncio.run(meanwhile()) < 0.5


def test_a_cancelled_upload_stops_its_decoding_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client left: the awaiting task is cancelled, and the worker thread stops at its next frame
    instead of decoding the rest (about a second of FFmpeg frames) for nobody."""
    data, started, outcome = matroska_pcm(50_000), threading.Event(), []

    def watched(*args: object) -> tuple[np.ndarray, int]:
        started.set()
        try:
            return decode_mono(*args)
        except BaseException as exc:
            outcome.append(exc)
            raise

    monkeypatch.setattr(decode, "decode_mono", watched)

    async def leave_midway() -> None:
        task = asyncio.create_task(decode_upload(data, BOUNDS, FIELD, DecodePool(1)))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not outcome:  # the pool's thread, which nobody awaits any more, stopping
            await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(leave_midway(), 5))
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)


def ingress_process() -> Path:
    """/proc of the session app's TTSIngress replica (Ray titles an actor's process after its class)."""
    title = b"ray::ServeReplica:voxcpm:TTSIngress"
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                return entry
    raise LookupError("no TTSIngress replica process")


def status_kib(process: Path, key: str) -> int:
    (line,) = [line for line in (process / "status").read_text().splitlines() if line.startswith(f"{key}:")]
    return int(line.split()[1])


def test_the_bomb_is_413_through_the_service(url: str) -> None:
    """Refused from its header: the ingress's peak memory grows by the upload and the request, not by what the
    header claims (the 60 s bomb's 1.3 GB)."""
    data = bomb(60)
    process = ingress_process()
    (process / "clear_refs").write_text("5")  # the peak (VmHWM) starts again from what is resident now
    before = status_kib(process, "VmRSS")
    response = requests.post(f"{url}/api/tts/stream", data={"text": "hi"}, files={"prompt_audio": data})
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large" and error_of(response)["field"] == "prompt_audio"
    assert (status_kib(process, "VmHWM") - before) / 1024 < 32  # MiB
    response = requests.post(f"{url}/api/voices", data={"name": "bomb", "text": "hi"}, files={"audio": data})
    assert response.status_code == 413 and error_of(response)["field"] == "audio"
