"""Output formats: float32 mono chunks in, encoded bytes out, chunk by chunk.

WAV and raw PCM are written here (a streaming WAV header is the one thing no library writes);
FLAC, MP3, Opus (in Ogg), AAC (ADTS) and telephony's G.711 (raw mu-law and A-law, 8 kHz unless asked
otherwise) go through FFmpeg's encoders in PyAV, muxed into an in-memory sink that is drained after
every chunk, so each format streams as far as its container allows (Ogg pages are flushed every 100 ms).
"""

from __future__ import annotations

import io
from enum import StrEnum
from typing import Protocol

import av
import numpy as np
import soxr

from serve_app.audio import wav


class AudioFormat(StrEnum):
    WAV = "wav"
    PCM = "pcm"
    FLAC = "flac"
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    ULAW = "ulaw"  # G.711 mu-law, raw: what phone lines (Twilio, Vonage, Telnyx media streams) carry
    ALAW = "alaw"  # G.711 A-law, raw


MEDIA_TYPES = {
    AudioFormat.WAV: "audio/wav",
    AudioFormat.PCM: "audio/pcm",
    AudioFormat.FLAC: "audio/flac",
    AudioFormat.MP3: "audio/mpeg",
    AudioFormat.OPUS: "audio/ogg",
    AudioFormat.AAC: "audio/aac",
    AudioFormat.ULAW: "audio/PCMU",  # RFC 4856's names for raw G.711
    AudioFormat.ALAW: "audio/PCMA",
}
# The rate a format is sent at unless the request asks for another (else the model's own).
DEFAULT_RATES = {AudioFormat.ULAW: 8000, AudioFormat.ALAW: 8000}

# format -> (FFmpeg muxer, encoder, muxer options)
_FFMPEG = {
    AudioFormat.FLAC: ("flac", "flac", {}),
    AudioFormat.MP3: ("mp3", "libmp3lame", {}),
    AudioFormat.OPUS: ("ogg", "libopus", {"page_duration": "100000"}),
    AudioFormat.AAC: ("adts", "aac", {}),
    AudioFormat.ULAW: ("mulaw", "pcm_mulaw", {}),
    AudioFormat.ALAW: ("alaw", "pcm_alaw", {}),
}


def supported_rates(fmt: AudioFormat) -> tuple[int, ...] | None:
    """Sample rates the format's encoder takes; None: any."""
    if fmt not in _FFMPEG:
        return None
    rates = av.codec.Codec(_FFMPEG[fmt][1], "w").audio_rates
    return tuple(rates) if rates else None


def output_rate(fmt: AudioFormat, model_rate: int, requested: int | None) -> int:
    """The rate to encode at: the requested one, else the format's own (G.711: 8 kHz), else the model's, else
    the nearest the codec takes.

    Raises ValueError when a requested rate is one the format cannot carry.
    """
    rates = supported_rates(fmt)
    if requested is not None:
        if rates is not None and requested not in rates:
            raise ValueError(f"{fmt} supports sample rates {sorted(rates)}, not {requested}")
        return requested
    if fmt in DEFAULT_RATES:
        return DEFAULT_RATES[fmt]
    if rates is None or model_rate in rates:
        return model_rate
    return min(rates, key=lambda rate: (abs(rate - model_rate), -rate))


class Encoder(Protocol):
    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


class _Resampled:
    """Resamples a chunked signal continuously (soxr keeps its filter state across chunks)."""

    def __init__(self, inner: Encoder, in_rate: int, out_rate: int) -> None:
        self._inner = inner
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def encode(self, samples: np.ndarray) -> bytes:
        return self._inner.encode(self._stream.resample_chunk(np.asarray(samples, dtype=np.float32)))

    def finish(self) -> bytes:
        return (
            self._inner.encode(self._stream.resample_chunk(np.zeros(0, np.float32), last=True)) + self._inner.finish()
        )


class _Pcm:
    def encode(self, samples: np.ndarray) -> bytes:
        return wav.pcm16(samples)

    def finish(self) -> bytes:
        return b""


class _StreamingWav(_Pcm):
    def __init__(self, sample_rate: int) -> None:
        self._header: bytes = wav.streaming_header(sample_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + super().encode(samples)

    def finish(self) -> bytes:
        return self._header  # an empty utterance is still a valid (empty) WAV


class _Sink(io.RawIOBase):
    """A seekable in-memory file whose new bytes are taken after each chunk.

    Muxers that seek back at the end (FLAC's STREAMINFO) patch bytes already sent; what the
    client got is still valid, with the length left unknown, as in any live stream.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._sent = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(data)
        end = self._position + len(data)
        if end > len(self._buffer):
            self._buffer.extend(bytes(end - len(self._buffer)))
        self._buffer[self._position : end] = data
        self._position = end
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._buffer)}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def take_new(self) -> bytes:
        new = bytes(self._buffer[self._sent :])
        self._sent = len(self._buffer)
        return new


class _FFmpeg:
    def __init__(self, fmt: AudioFormat, sample_rate: int) -> None:
        muxer, codec, options = _FFMPEG[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        self._rate = sample_rate

    def encode(self, samples: np.ndarray) -> bytes:
        if len(samples):
            frame = av.AudioFrame.from_ndarray(
                np.asarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
            )
            frame.sample_rate = self._rate
            self._container.mux(self._stream.encode(frame))
        return self._sink.take_new()

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take_new()


def encoder(fmt: AudioFormat, model_rate: int, out_rate: int) -> Encoder:
    """A chunk-by-chunk encoder of ``model_rate`` audio into ``fmt`` at ``out_rate``."""
    inner: Encoder
    if fmt is AudioFormat.WAV:
        inner = _StreamingWav(out_rate)
    elif fmt is AudioFormat.PCM:
        inner = _Pcm()
    else:
        inner = _FFmpeg(fmt, out_rate)
    return inner if out_rate == model_rate else _Resampled(inner, model_rate, out_rate)


def encode_whole(fmt: AudioFormat, samples: np.ndarray, model_rate: int, out_rate: int) -> bytes:
    """A complete file; WAV gets exact sizes (unlike the streaming header)."""
    if out_rate != model_rate:
        samples = soxr.resample(np.asarray(samples, dtype=np.float32), model_rate, out_rate, quality="HQ")
    if fmt is AudioFormat.WAV:
        return wav.wav_file(samples, out_rate)
    whole = encoder(fmt, out_rate, out_rate)
    return whole.encode(samples) + whole.finish()
