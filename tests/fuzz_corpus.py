"""Crafted uploads for the fuzz campaign, made in memory from a seed (nothing binary is committed): valid files of
every container on the upload allow-list (serve_app/audio/containers.py) mangled, LoRA adapter files (safetensors
and torch .ckpt zips) mutated, and malformed multipart bodies. benchmarks/fuzz_uploads.py sends thousands through
the real service, tests/service/test_upload_fuzz.py a fixed slice; both hold it to one rule: success or a client
error (4xx, in the contract's shape), never a 5xx, a dropped connection or a hang.

Case ``i`` of seed ``s`` depends on nothing else (its own ``random.Random``), so any failure is made again alone:
``case(s, i, layout)``.
"""

from __future__ import annotations

import io
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import av
import numpy as np
import requests
import soundfile as sf

from tests.fuzz_bodies import adapter_case, adapter_tensors, multipart_case, safetensors_bytes, safetensors_parts

Layout = dict[str, tuple[int, ...]]  # a model's LoRA parameter names -> shapes (as serve_app.model.adapters)
Maker = Callable[[np.ndarray, int], bytes]
V2 = "v2"  # a case for a VoxCPM2-shaped model: /api/tts reads reference_audio only there
TTS_FIELDS = {"text": "你好", "max_len": "4", "inference_timesteps": "1"}
FAMILIES = ("audio", "adapter", "multipart")


@dataclass
class Case:
    """One request: a form (``fields`` and ``files``: name -> (filename, bytes, content type)) or a raw ``body``."""

    seed: int
    index: int
    family: str
    route: str
    description: str
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str = ""
    target: str = "v1.5"
    expect: str = "2xx/4xx"  # "2xx" for an unmutated file: the corpus's seeds must be valid, or it proves nothing

    @property
    def label(self) -> str:
        return f"#{self.index} {self.family} {self.route}{' (v2)' if self.target == V2 else ''}: {self.description}"


# --- valid audio of every allow-listed container ---


def by_libsndfile(fmt: str, subtype: str | None = None) -> Maker:
    def make(samples: np.ndarray, rate: int) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
        return buffer.getvalue()

    return make


def by_ffmpeg(muxer: str, codec: str) -> Maker:
    def make(samples: np.ndarray, rate: int) -> bytes:
        layout = "stereo" if samples.shape[1] == 2 else "mono"
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=muxer) as container:
            stream = container.add_stream(codec, rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout=layout)
            frame.sample_rate = rate
            wanted = stream.codec_context.codec.audio_formats[0].name
            for piece in av.AudioResampler(format=wanted, layout=layout, rate=rate).resample(frame):
                container.mux(stream.encode(piece))
            container.mux(stream.encode(None))
        return buffer.getvalue()

    return make


# PyAV's wheels from 18.1.1 on carry FFmpeg's AMR-NB decoder but not libopencore's encoder: an AMR-NB file of the
# tone (test_containers.py's, 8 kHz mono), written once by libopencore_amrnb through PyAV 18.1.0.
AMR_NB_TONE = Path(__file__).parent / "data" / "tone-8k.amr"
ANY_RATE, OPUS_RATES, MPEG_RATES = (8000, 16000, 22050, 44100, 48000), (16000, 48000), (16000, 22050, 44100)
# name -> (maker, rates, channel counts): libsndfile writes what it can, FFmpeg (PyAV) the rest
CONTAINERS: dict[str, tuple[Maker, tuple[int, ...], tuple[int, ...]]] = {
    "wav": (by_libsndfile("WAV", "PCM_16"), ANY_RATE, (1, 2)),
    "wav-float": (by_libsndfile("WAV", "FLOAT"), ANY_RATE, (1, 2)),
    "rf64": (by_libsndfile("RF64"), ANY_RATE, (1, 2)),
    "w64": (by_libsndfile("W64"), ANY_RATE, (1, 2)),
    "flac": (by_libsndfile("FLAC"), ANY_RATE, (1, 2)),
    "ogg-vorbis": (by_libsndfile("OGG", "VORBIS"), ANY_RATE, (1, 2)),
    "ogg-opus": (by_libsndfile("OGG", "OPUS"), OPUS_RATES, (1, 2)),
    "aiff": (by_libsndfile("AIFF", "PCM_16"), ANY_RATE, (1, 2)),
    "aifc": (by_libsndfile("AIFF", "FLOAT"), ANY_RATE, (1, 2)),
    "caf": (by_libsndfile("CAF", "PCM_16"), ANY_RATE, (1, 2)),
    "caf-alac": (by_libsndfile("CAF", "ALAC_16"), ANY_RATE, (1, 2)),
    "mp3-libsndfile": (by_libsndfile("MP3"), MPEG_RATES, (1, 2)),
    "mp3-lame": (by_ffmpeg("mp3", "libmp3lame"), MPEG_RATES, (1, 2)),
    "aac-adts": (by_ffmpeg("adts", "aac"), ANY_RATE, (1, 2)),
    "mp4-aac": (by_ffmpeg("mp4", "aac"), ANY_RATE, (1, 2)),
    "m4a-alac": (by_ffmpeg("ipod", "alac"), ANY_RATE, (1, 2)),
    "mov-pcm": (by_ffmpeg("mov", "pcm_s16le"), ANY_RATE, (1, 2)),
    "webm-opus": (by_ffmpeg("webm", "libopus"), (48000,), (1, 2)),
    "mkv-aac": (by_ffmpeg("matroska", "aac"), ANY_RATE, (1, 2)),
    "ogg-opus-ffmpeg": (by_ffmpeg("ogg", "libopus"), (48000,), (1, 2)),
    "amr-nb": (lambda samples, rate: AMR_NB_TONE.read_bytes(), (8000,), (1,)),
}


@cache
def audio_seed(container: str, rate: int, channels: int, tenths: int) -> bytes:
    """``tenths`` of a second of a gliding tone (cached: a campaign mangles each seed many times)."""
    t = np.arange(rate * tenths // 10) / rate
    wave = 0.25 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    samples = np.stack([wave * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)
    return CONTAINERS[container][0](samples, rate)


def random_seed(rng: random.Random, container: str | None = None) -> tuple[str, bytes]:
    container = container or rng.choice(sorted(CONTAINERS))
    _, rates, channels = CONTAINERS[container]
    rate, count, tenths = rng.choice(rates), rng.choice(channels), rng.randint(2, 10)
    return f"{container} {rate} Hz {count} ch 0.{tenths}s".replace("0.10s", "1.0s"), audio_seed(
        container, rate, count, tenths
    )


# --- mutations of any file ---

# Header fields by the marker they follow: (offset from the marker, bytes, byte order). WAV/RF64/W64 fmt, AIFF
# COMM, CAF desc, FLAC STREAMINFO, Ogg pages and Opus/Vorbis heads, MP4 boxes, Matroska elements, ID3.
FIELDS: dict[bytes, tuple[tuple[int, int, str], ...]] = {
    b"RIFF": ((4, 4, "<"),),
    b"fmt ": ((8, 2, "<"), (10, 2, "<"), (12, 4, "<"), (16, 4, "<"), (20, 2, "<"), (22, 2, "<")),
    b"data": ((4, 4, "<"), (4, 4, ">"), (4, 8, ">")),
    b"ds64": ((8, 8, "<"), (16, 8, "<"), (24, 8, "<")),
    b"FORM": ((4, 4, ">"),),
    b"COMM": ((4, 4, ">"), (8, 2, ">"), (10, 4, ">"), (14, 2, ">"), (16, 2, ">")),
    b"SSND": ((4, 4, ">"), (8, 4, ">")),
    b"desc": ((4, 8, ">"), (12, 8, ">"), (28, 4, ">"), (32, 4, ">"), (36, 4, ">"), (40, 4, ">")),
    b"pakt": ((4, 8, ">"), (12, 8, ">"), (20, 8, ">")),
    b"fLaC": ((5, 3, ">"), (8, 2, ">"), (10, 2, ">"), (18, 3, ">"), (20, 2, ">"), (21, 4, ">")),
    b"OggS": ((6, 8, "<"), (22, 4, "<"), (26, 1, "<")),
    b"OpusHead": ((9, 1, "<"), (10, 2, "<"), (12, 4, "<"), (18, 1, "<")),
    b"\x01vorbis": ((11, 1, "<"), (12, 4, "<"), (28, 1, "<")),
    **{box: ((-4, 4, ">"),) for box in (b"ftyp", b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mdat", b"esds")},
    b"mdhd": ((-4, 4, ">"), (16, 4, ">"), (20, 4, ">")),
    **{box: ((-4, 4, ">"), (20, 2, ">"), (22, 2, ">"), (28, 4, ">")) for box in (b"mp4a", b"alac", b"sowt", b"twos")},
    **{box: ((-4, 4, ">"), (8, 4, ">"), (12, 4, ">")) for box in (b"stsd", b"stts", b"stsc", b"stsz", b"stco")},
    b"\x1a\x45\xdf\xa3": ((4, 1, ">"), (5, 8, ">")),  # EBML header size
    b"\x18\x53\x80\x67": ((4, 8, ">"),),  # Segment size
    b"\x1f\x43\xb6\x75": ((4, 1, ">"), (4, 8, ">")),  # Cluster size
    b"\xb5\x88": ((2, 8, ">"),),  # SamplingFrequency (a float)
    b"\x9f\x81": ((2, 1, ">"),),  # Channels
    b"ID3": ((6, 4, ">"),),
    b"#!AMR": ((6, 1, ">"),),
    b"\xff\xf1": ((1, 1, ">"), (2, 2, ">"), (3, 2, ">")),  # ADTS: rate index, channels, frame length
    b"\xff\xfb": ((0, 1, ">"), (1, 1, ">")),  # MPEG audio: bitrate, rate index, mode
}
EXTREMES = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


def set_field(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    found = [(marker, at) for marker in FIELDS if (at := data.find(marker, 0, 1 << 16)) >= 0]
    if not found:
        return flip(data, rng)
    marker, at = rng.choice(found)
    offset, size, order = rng.choice(FIELDS[marker])
    start = at + offset
    if not 0 <= start <= len(data) - size:
        return truncate(data, rng)
    value = rng.choice([*EXTREMES, rng.getrandbits(8 * size)]) & ((1 << 8 * size) - 1)
    mutated = data[:start] + value.to_bytes(size, "little" if order == "<" else "big") + data[start + size :]
    return mutated, f"{marker!r}+{offset} ({size} B) := {value:#x}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(min(len(data), rng.choice([16, 64, 512, len(data)])) or 1)
    return data[:cut], f"truncated at {cut}"


def flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Bytes flipped in the header or anywhere; past the magic number mostly (a broken magic is merely a 415)."""
    mutated, span = bytearray(data), min(len(data), rng.choice([64, 1024, len(data)])) or 1
    first = rng.choice([0, 12, 12, 12, 40]) if span > 40 else 0
    places = sorted(rng.randrange(first, span) for _ in range(rng.randint(1, 16)))
    for place in places:
        if place < len(mutated):
            mutated[place] ^= rng.randint(1, 255)
    return bytes(mutated), f"flipped bytes at {places}"


def duplicate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start = rng.randrange(len(data) or 1)
    length, times = rng.choice([8, 64, 512, 8192]), rng.randint(1, 50)
    piece = data[start : start + length]
    return data[:start] + piece * (times + 1) + data[start + length :], f"{len(piece)} B at {start} repeated {times}x"


def overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    start, length = rng.randrange(len(data) or 1), rng.choice([4, 64, 4096])
    fill = rng.choice([b"\x00", b"\xff", bytes([rng.getrandbits(8)])]) * length
    return data[:start] + fill + data[start + length :], f"{length} B at {start} set to {fill[:1].hex()}"


def foreign_head(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Another container's first bytes on this one's body, or this one's head on another's body."""
    other_name, other = random_seed(rng)
    cut = rng.choice([4, 12, 40, 512])
    if rng.random() < 0.5:
        return other[:cut] + data[cut:], f"head ({cut} B) of {other_name}"
    return data[:cut] + other[cut:], f"body of {other_name} after {cut} B"


def id3_prefix(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """An ID3v2 tag in front (as taggers put one), of the size it claims or lying about it."""
    size = rng.choice([0, 16, 1024])
    claimed = rng.choice([size, size, 0x0FFFFFFF, rng.getrandbits(28), max(size - 1, 0)])
    syncsafe = bytes((claimed >> shift) & 0x7F for shift in (21, 14, 7, 0))
    flags = rng.choice([0, 0, 0x10, 0xFF])
    return b"ID3\x04\x00" + bytes([flags]) + syncsafe + bytes(size) + data, f"ID3 tag of {size} B claiming {claimed}"


AUDIO_MUTATIONS = (truncate, flip, set_field, set_field, duplicate, overwrite, foreign_head, id3_prefix)


def mangled(data: bytes, rng: random.Random, mutations: tuple = AUDIO_MUTATIONS) -> tuple[bytes, str]:
    steps = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        data, step = rng.choice(mutations)(data, rng)
        steps.append(step)
    return data, "; ".join(steps)


# --- cases ---


def audio_case(rng: random.Random, case: Case, container: str | None = None, valid: bool | None = None) -> Case:
    name, data = random_seed(rng, container)
    valid = rng.random() < 0.05 if valid is None else valid
    if not valid:
        data, how = mangled(data, rng)
        name = f"{name}, {how}"
    upload = (rng.choice(["upload", "voice.wav", "a.mp3", ""]), data, rng.choice(["application/octet-stream", ""]))
    where = rng.choice(["voices/audio", "voices/reference_audio", "tts/prompt_audio", "tts/reference_audio"])
    case.description, case.expect = name, "2xx" if valid else case.expect
    if where.startswith("voices"):
        good = ("prompt.wav", audio_seed("wav", 16000, 1, 5), "audio/wav")
        case.route, case.fields = "/api/voices", {"name": f"fuzz {case.seed}-{case.index}", "text": "参考音频的文本"}
        case.files = {"audio": upload} if where.endswith("/audio") else {"audio": good, "reference_audio": upload}
    elif where == "tts/prompt_audio":
        case.route, case.fields = "/api/tts", {**TTS_FIELDS, "prompt_text": "参考"}
        case.files = {"prompt_audio": upload}
    else:
        case.route, case.fields, case.target = "/api/tts", dict(TTS_FIELDS), V2
        case.files = {"reference_audio": upload}
    case.description = f"{where.split('/')[1]} = {case.description}"
    return case


def case(
    seed: int, index: int, layout: Layout, family: str | None = None, container: str | None = None, valid: bool = False
) -> Case:
    """Case ``index`` of ``seed``: a family drawn (audio half the time) unless given, then made from its own rng;
    ``valid``: an audio file left as made (else mangled but for one in twenty)."""
    rng = random.Random(f"{seed}:{index}")
    family = family or rng.choice(["audio", "audio", "adapter", "multipart"])
    made = Case(seed, index, family, "", "")
    if family == "audio":
        return audio_case(rng, made, container, valid or None)
    audio = audio_seed("wav", 16000, 1, 5)
    if family == "adapter":
        return adapter_case(rng, made, layout, audio)
    return multipart_case(rng, made, audio, safetensors_bytes(*safetensors_parts(adapter_tensors(layout, rng))))


def cases(seed: int, count: int, layout: Layout, start: int = 0) -> Iterator[Case]:
    for index in range(start, start + count):
        yield case(seed, index, layout)


def served_layout(preset: str = "tiny-voxcpm1.5") -> Layout:
    """The LoRA layout a replica of ``preset`` with the default ``lora:`` checks adapters against, from the model
    built on the meta device (no weights, a few seconds), as ``VoxCPMRuntime`` builds it."""
    import torch

    from serve_app.config import LoRAShape
    from serve_app.model import adapters, synthetic

    with tempfile.TemporaryDirectory() as directory, torch.device("meta"):
        _, model = synthetic.instantiate(preset, directory)  # type: ignore[arg-type]
        model.lora_config = adapters.lora_config(LoRAShape())
        model._apply_lora()  # what voxcpm's constructor does when given a LoRA config (instantiate gives none)
    return adapters.layout(model)


# --- sending ---


@dataclass
class Outcome:
    status: int | str  # the HTTP status, "hang" (no answer in time) or "dropped: <exception>"
    seconds: float
    error: dict | None = None  # a 4xx/5xx's JSON error object, when it has the contract's shape
    shape_ok: bool = True  # an error answered in the contract's shape ({"error": {"code", "message", "field"}})
    text: str = ""

    @property
    def failed(self) -> bool:
        return not isinstance(self.status, int) or self.status >= 500


def send(made: Case, bases: dict[str, str], timeout_s: float = 30.0) -> Outcome:
    """``made`` POSTed to ``bases[made.target]``; what came back, within ``timeout_s`` of silence. A created
    voice or adapter is deleted again, so a campaign leaves the stores as it found them."""
    url = bases[made.target] + made.route
    fields = {**made.fields, **({"model": bases["v2-model"]} if made.target == V2 and "v2-model" in bases else {})}
    started = time.perf_counter()
    try:
        if made.body is not None:
            headers = {"content-type": made.content_type} if made.content_type else {}
            response = requests.post(url, data=made.body, headers=headers, timeout=(10, timeout_s))
        else:
            response = requests.post(url, data=fields, files=made.files or None, timeout=(10, timeout_s))
        seconds = time.perf_counter() - started
    except requests.Timeout:
        return Outcome("hang", time.perf_counter() - started)
    except requests.RequestException as exc:
        return Outcome(f"dropped: {type(exc).__name__}", time.perf_counter() - started, text=str(exc)[:300])
    outcome = Outcome(response.status_code, seconds, text=response.text[:300] if response.status_code >= 400 else "")
    if response.status_code >= 400:
        outcome.error, outcome.shape_ok = contract_error(response)
    elif response.status_code == 201:
        created = response.json()
        for key, path in (("voice_id", "/api/voices/"), ("adapter_id", "/api/adapters/")):
            if key in created:
                requests.delete(f"{bases[made.target]}{path}{created[key]}", timeout=30)
    return outcome


def contract_error(response: requests.Response) -> tuple[dict | None, bool]:
    try:
        body = response.json()
    except ValueError:
        return None, False
    ok = response.headers.get("content-type", "").startswith("application/json") and isinstance(body, dict)
    error = body.get("error") if ok else None
    ok = ok and set(body) == {"error"} and isinstance(error, dict) and set(error) == {"code", "message", "field"}
    return error if ok else None, ok
