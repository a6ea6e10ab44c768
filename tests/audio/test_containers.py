"""Only audio, only from the bytes sent: every accepted container decodes; session descriptions, playlists,
concat lists, images, text and the formats libsndfile alone knows are refused (415 naming the field) in
milliseconds, before FFmpeg or libsndfile sees them, binding no socket; bytes that start as one container
and go on as another are refused as the client's error, never a 500; FFmpeg reading on without decoding is
stopped at the deadline. Every file is made here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import struct
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from serve_app.audio import containers, decode
from serve_app.audio.containers import AudioContainer, sniff
from serve_app.audio.decode import decode_mono
from serve_app.errors import PayloadTooLarge, ServiceError, UnsupportedMedia
from tests.conftest import BOUNDS
from tests.fuzz_corpus import AMR_NB_TONE

FIELD = "prompt_audio"
TONE_S = 1.0


def tone(rate: int, channels: int = 1) -> np.ndarray:
    """One second of a 440 Hz tone at a quarter of full scale, (frames, channels)."""
    wave = 0.25 * np.sin(2 * np.pi * 440 * np.arange(int(rate * TONE_S)) / rate)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def by_libsndfile(fmt: str, subtype: str | None = None, rate: int = 16000, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, tone(rate, channels), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def by_ffmpeg(muxer: str, codec: str, rate: int = 48000, layout: str = "mono") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        channels = 2 if layout == "stereo" else 1
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone(rate, channels).T), format="fltp", layout=layout)
        frame.sample_rate = rate
        if "s16" in stream.codec_context.codec.audio_formats[0].name:
            frame = av.AudioResampler(format="s16", layout=layout, rate=rate).resample(frame)[0]
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


ACCEPTED: dict[str, tuple[Callable[[], bytes], AudioContainer]] = {
    "wav": (lambda: by_libsndfile("WAV"), containers.WAV),
    "wav-extensible": (lambda: by_libsndfile("WAVEX", channels=3), containers.WAV),
    "rf64": (lambda: by_libsndfile("RF64"), containers.RF64),
    "w64": (lambda: by_libsndfile("W64", "FLOAT"), containers.W64),
    "flac": (lambda: by_libsndfile("FLAC", rate=44100, channels=2), containers.FLAC),
    "ogg-vorbis": (lambda: by_libsndfile("OGG", "VORBIS"), containers.OGG),
    "ogg-opus": (lambda: by_libsndfile("OGG", "OPUS", rate=48000), containers.OGG),
    "aiff": (lambda: by_libsndfile("AIFF", "PCM_24"), containers.AIFF),
    "aifc": (lambda: by_libsndfile("AIFF", "FLOAT"), containers.AIFF),
    "caf": (lambda: by_libsndfile("CAF", "ALAC_16"), containers.CAF),
    "mp3-libsndfile": (lambda: by_libsndfile("MP3", rate=22050), containers.MP3),
    "mp3-ffmpeg-id3": (lambda: by_ffmpeg("mp3", "libmp3lame", 44100, "stereo"), containers.MP3),
    "aac-adts": (lambda: by_ffmpeg("adts", "aac", 44100), containers.AAC),
    "mp4-aac": (lambda: by_ffmpeg("mp4", "aac", 44100, "stereo"), containers.MP4),
    "m4a-alac": (lambda: by_ffmpeg("ipod", "alac", 44100), containers.MP4),
    "mov-pcm": (lambda: by_ffmpeg("mov", "pcm_s16le", 16000), containers.MP4),
    "webm-opus": (lambda: by_ffmpeg("webm", "libopus"), containers.MATROSKA),
    "mkv-aac": (lambda: by_ffmpeg("matroska", "aac", 16000), containers.MATROSKA),
    "ogg-opus-ffmpeg": (lambda: by_ffmpeg("ogg", "libopus"), containers.OGG),
    "amr-nb": (lambda: AMR_NB_TONE.read_bytes(), containers.AMR),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_every_accepted_container_decodes(name: str) -> None:
    make, container = ACCEPTED[name]
    data = make()
    assert sniff(data, FIELD) == container
    mono, rate = decode_mono(data, BOUNDS, FIELD)
    assert abs(len(mono) / rate - TONE_S) < 0.1, (len(mono), rate)  # lossy encoders pad a frame or two
    assert 0.1 < np.sqrt(np.mean(mono**2)) < 0.25  # the tone, not silence or noise (its RMS: 0.177)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bound_udp_ports() -> set[int]:
    """Every UDP port bound on this machine's network namespace (by any process)."""
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


def sdp(port: int) -> bytes:
    """A session description FFmpeg's probing reads as an RTP session: it binds ``port`` and its RTCP port."""
    return (
        f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=attack\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def image(codec: str) -> bytes:
    """A whole PNG or JPEG file: FFmpeg's image encoders write one per packet."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height = 16, 16
    encoder.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format=encoder.pix_fmt)
    return b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])


VICTIM = "0123456789abcdef0123456789abcdef/audio.flac"  # another tenant's recording, relative to the cwd


def refused_uploads(port: int) -> dict[str, bytes]:
    return {
        "sdp": sdp(port),
        "ffconcat": f"ffconcat version 1.0\nfile {VICTIM}\n".encode(),
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{VICTIM}\n#EXT-X-ENDLIST\n".encode(),
        "png": image("png"),
        "jpeg": image("mjpeg"),
        "text": "你好，这不是音频。\n".encode(),
        "au": by_libsndfile("AU"),
        "nist": by_libsndfile("NIST"),
        "voc": by_libsndfile("VOC"),
    }


def voice_store_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A readable recording where the lists point, and the working directory there, as the ingress's is."""
    (tmp_path / VICTIM).parent.mkdir()
    (tmp_path / VICTIM).write_bytes(by_libsndfile("FLAC"))
    monkeypatch.chdir(tmp_path)


REFUSED = ["sdp", "ffconcat", "hls", "png", "jpeg", "text", "au", "nist", "voc"]


def test_the_crafted_session_description_is_the_attack() -> None:
    """What FFmpeg's probing, which decoded uploads before, does with it: it opens the RTP session, binding the
    port the text names, and waits for packets (here until PyAV's 1 s timeout)."""
    port, bound = free_udp_port(), False

    def probe() -> None:
        with contextlib.suppress(av.FFmpegError), av.open(io.BytesIO(sdp(port)), timeout=1):
            pass

    prober = threading.Thread(target=probe)
    prober.start()
    while prober.is_alive() and not bound:
        bound = port in bound_udp_ports()
        time.sleep(0.01)
    prober.join()
    assert bound


@pytest.mark.parametrize("name", REFUSED)
def test_what_is_no_accepted_audio_is_415_at_once(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    voice_store_in(tmp_path, monkeypatch)
    port = free_udp_port()
    data = refused_uploads(port)[name]
    if name in ("au", "nist", "voc"):
        assert len(sf.read(io.BytesIO(data))[0]) == 16000  # libsndfile alone would have read it
    started = time.monotonic()
    with pytest.raises(UnsupportedMedia) as refused:
        decode_mono(data, BOUNDS, FIELD)
    assert time.monotonic() - started < 0.1
    assert refused.value.field == FIELD and refused.value.message.startswith(f"{FIELD} is not audio")
    assert port not in bound_udp_ports()


HEADS = ["riff", "rf64", "flac", "ogg", "mp4", "ebml", "aiff", "caf", "amr", "mp3-frame", "adts-frame", "id3-mp3"]


def lying(body: bytes) -> dict[str, bytes]:
    """Each container's first bytes, then ``body``."""
    return {
        "riff": b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body,
        "rf64": b"RF64\xff\xff\xff\xffWAVE" + body,
        "flac": b"fLaC" + body,
        "ogg": b"OggS" + body,
        "mp4": b"\x00\x00\x00\x10ftypisom\x00\x00\x00\x00" + body,
        "ebml": b"\x1a\x45\xdf\xa3" + body,
        "aiff": b"FORM\x00\x00\x00\x40AIFF" + body,
        "caf": b"caff\x00\x01\x00\x00" + body,
        "amr": b"#!AMR\n" + body,
        "mp3-frame": b"\xff\xfb\x90\x64" + body,
        "adts-frame": b"\xff\xf1\x50\x80" + body,
        "id3-mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64" + body,
    }


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("body", ["sdp", "ffconcat", "png", "nist", "zeros"])
def test_bytes_that_start_as_audio_and_go_on_as_another_thing_are_refused(
    head: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voice_store_in(tmp_path, monkeypatch)
    port = free_udp_port()
    data = lying(bytes(100_000) if body == "zeros" else refused_uploads(port)[body])[head]
    started = time.monotonic()
    with pytest.raises(ServiceError) as refused:
        decode_mono(data, BOUNDS, FIELD)
    assert time.monotonic() - started < 0.5
    # 415 mostly; an ADTS header's FFmpeg reads as 0 Hz (400), and zeros after "#!AMR" are AMR frames (422: long)
    assert refused.value.status in (400, 415, 422) and refused.value.field == FIELD
    assert port not in bound_udp_ports()


@pytest.mark.parametrize("fmt", ["AU", "NIST", "VOC"])
def test_libsndfile_reading_another_format_than_the_bytes_say_is_refused(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libsndfile guesses for itself: should it ever read another format than the one recognised (here, files
    of its own formats taken for WAV), neither it nor FFmpeg's forced demuxer decodes the upload."""
    monkeypatch.setattr(decode, "sniff", lambda data, field: containers.WAV)
    with pytest.raises(UnsupportedMedia, match=f"libsndfile reads it as {fmt}, not WAV") as refused:
        decode_mono(by_libsndfile(fmt), BOUNDS, FIELD)
    assert refused.value.field == FIELD


MP3_FRAME_HEADER = b"\xff\xfb\x90\x64"  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz


def test_the_deadline_holds_while_ffmpeg_reads_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MP3 frame header, then 19 MB of zeros: FFmpeg reads all of it looking for a frame, and none ever
    arrives. With every read slowed to 10 ms, as if FFmpeg waited on it, that would take 6 s: the deadline,
    checked at each read, stops it."""
    reads, read = [], decode._Input.read

    def slow(self: decode._Input, size: int = -1) -> bytes:
        reads.append(size)
        time.sleep(0.01)
        return read(self, size)

    monkeypatch.setattr(decode._Input, "read", slow)
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge, match=r"took longer than 0\.3 s to decode") as refused:
        decode_mono(MP3_FRAME_HEADER + bytes(19_000_000), dataclasses.replace(BOUNDS, timeout_s=0.3), FIELD)
    assert time.monotonic() - started < 1 and len(reads) < 60 and refused.value.field == FIELD


@pytest.mark.parametrize(
    ("data", "container"),
    [
        (b"ID3\x03\x00\x10\x00\x00\x00\x02" + bytes(2) + bytes(10) + b"fLaC", containers.FLAC),  # with a footer
        (b"ID3\x03\x00\x00\x00\x00\x00\x01\x00" + b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"OggS", containers.OGG),
        (b"\xff\xf9\x50\x80", containers.AAC),  # MPEG-2 ADTS
        (b"\xff\xe3\x18\xc4", containers.MP3),  # MPEG 2.5 layer III
    ],
)
def test_id3_tags_and_frame_headers(data: bytes, container: AudioContainer) -> None:
    assert sniff(data, FIELD) == container


@pytest.mark.parametrize(
    "data",
    [b"", b"ID3", b"ID3\x03\x00\x00\x00\x00\x00\x10", b"\xff\xfb\xf0\x00", b"\xff\xfb\x9c\x00", b"\xff\xe9\x90\x00"],
    ids=["empty", "id3-only", "id3-past-the-end", "bitrate-15", "rate-3", "version-reserved"],
)
def test_what_only_looks_like_a_header_is_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedMedia):
        sniff(data, FIELD)
