"""What an upload's container is, from its first bytes: one of an explicit list of audio containers, or 415.

FFmpeg and libsndfile both guess a format from the bytes they are given, and each knows formats that are
no audio file: FFmpeg reads an SDP text as an RTP session (it binds the UDP ports the text names and waits
for packets), an ffconcat list or an HLS playlist as other files to open, a PNG as a video; libsndfile reads
AU, NIST, VOC, PAF and a dozen more. So neither guesses here. An upload is recognised by its magic number
as one of the containers below (what recorders, browsers and phones really send), and decoded with that
container's FFmpeg demuxer forced and, where libsndfile is allowed at all, only when libsndfile then says
it read that same container. Anything else is refused before FFmpeg or libsndfile sees a byte of it.

| container | recognised by | FFmpeg demuxer | libsndfile may read it as |
|---|---|---|---|
| WAV | ``RIFF`` .... ``WAVE`` | ``wav`` | ``WAV``, ``WAVEX`` |
| RF64 / BW64 (WAV over 4 GiB) | ``RF64`` / ``BW64`` .... ``WAVE`` | ``wav`` | ``RF64`` |
| Wave64 | its ``riff`` and ``wave`` GUIDs | ``w64`` | ``W64`` |
| FLAC | ``fLaC`` | ``flac`` | ``FLAC`` |
| MP3 (and MPEG layer I/II) | an MPEG audio frame header | ``mp3`` | ``MP3`` |
| AAC (ADTS) | an ADTS frame header | ``aac`` | none |
| Ogg (Vorbis, Opus, FLAC) | ``OggS`` | ``ogg`` | ``OGG`` |
| MP4 / M4A / MOV / 3GP | an ISO-BMFF ``ftyp`` box | ``mov`` | none |
| WebM / Matroska | the EBML magic ``1A 45 DF A3`` | ``matroska`` | none |
| AIFF / AIFF-C | ``FORM`` .... ``AIFF`` / ``AIFC`` | ``aiff`` | ``AIFF`` |
| CAF | ``caff`` | ``caf`` | ``CAF`` |
| AMR (narrow- and wideband) | ``#!AMR`` | ``amr`` | none |

ID3v2 tags before any of them are skipped, as both libraries skip them (taggers put them before MP3, AAC
and FLAC). Left out on purpose: every playlist, session, concat, manifest, image, video-only, subtitle and
device demuxer; headerless PCM (nothing to recognise); QuickTime files without an ``ftyp`` box (pre-2001);
and the rare audio formats libsndfile alone knows (AU, NIST, VOC, IRCAM, PAF, SVX, ...). Adding a container
is a line below, a test in ``tests/audio/test_containers.py`` and a row in docs/api.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serve_app.errors import UnsupportedMedia

ACCEPTED = "WAV, FLAC, MP3, AAC, Ogg (Vorbis, Opus), MP4/M4A/MOV, WebM/Matroska, AIFF, CAF or AMR"

_W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")
_W64_WAVE = bytes.fromhex("77617665f3acd3118cd100c04f8edb8a")


@dataclass(frozen=True)
class AudioContainer:
    """One accepted container: how to name it, FFmpeg's demuxer for it, what libsndfile may call it."""

    name: str
    demuxer: str  # forced on FFmpeg: nothing is probed
    libsndfile: frozenset[str] = frozenset()  # SoundFile.format values accepted; empty: FFmpeg alone decodes it


WAV = AudioContainer("WAV", "wav", frozenset({"WAV", "WAVEX"}))
RF64 = AudioContainer("RF64", "wav", frozenset({"RF64"}))
W64 = AudioContainer("Wave64", "w64", frozenset({"W64"}))
FLAC = AudioContainer("FLAC", "flac", frozenset({"FLAC"}))
MP3 = AudioContainer("MP3", "mp3", frozenset({"MP3"}))
AAC = AudioContainer("AAC", "aac")
OGG = AudioContainer("Ogg", "ogg", frozenset({"OGG"}))
MP4 = AudioContainer("MP4", "mov")
MATROSKA = AudioContainer("WebM/Matroska", "matroska")
AIFF = AudioContainer("AIFF", "aiff", frozenset({"AIFF"}))
CAF = AudioContainer("CAF", "caf", frozenset({"CAF"}))
AMR = AudioContainer("AMR", "amr")


def _mpeg_audio(head: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header: 11 sync bits, then no reserved version, layer, bitrate or rate."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    return version != 1 and layer != 0 and head[2] >> 4 != 15 and (head[2] >> 2) & 3 != 3


def _adts(head: bytes) -> bool:
    """An ADTS (AAC) frame header: 12 sync bits, layer 0, a sampling-rate index that exists."""
    return len(head) >= 3 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0 and (head[2] >> 2) & 0xF < 13


_SIGNATURES: tuple[tuple[Callable[[bytes], bool], AudioContainer], ...] = (
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WAVE", WAV),
    (lambda h: h[:4] in (b"RF64", b"BW64") and h[8:12] == b"WAVE", RF64),
    (lambda h: h[:16] == _W64_RIFF and h[24:40] == _W64_WAVE, W64),
    (lambda h: h[:4] == b"fLaC", FLAC),
    (lambda h: h[:4] == b"OggS", OGG),
    (lambda h: h[4:8] == b"ftyp", MP4),
    (lambda h: h[:4] == b"\x1a\x45\xdf\xa3", MATROSKA),
    (lambda h: h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"), AIFF),
    (lambda h: h[:4] == b"caff", CAF),
    (lambda h: h[:5] == b"#!AMR", AMR),
    (_mpeg_audio, MP3),
    (_adts, AAC),
)


def _after_id3(data: bytes) -> int:
    """Where the audio starts past any ID3v2 tags: a 10-byte header whose last four bytes are the tag's size
    in 7-bit bytes ("syncsafe"), then a 10-byte footer when its flags say so."""
    start = 0
    while data[start : start + 3] == b"ID3" and len(data) >= start + 10:
        size = data[start + 6 : start + 10]
        if any(byte & 0x80 for byte in size):
            break  # no ID3 tag after all: nothing below recognises "ID3", so it is refused
        footer = 10 if data[start + 5] & 0x10 else 0
        start += 10 + footer + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3])
    return start


def sniff(data: bytes, field: str) -> AudioContainer:
    """The container ``data`` is, by its magic number; 415 naming ``field`` for anything not on the list."""
    start = _after_id3(data)
    head = data[start : start + 40]
    for matches, container in _SIGNATURES:
        if matches(head):
            return container
    raise UnsupportedMedia(f"{field} is not audio in a format this service accepts ({ACCEPTED})", field)
