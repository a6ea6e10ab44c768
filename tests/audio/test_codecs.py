"""Every output format decodes back to the audio that went in: rate and duration."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from tests.conftest import decode

RATE = 44100
CHUNK = 1470  # one tiny-model step


def chunks(n: int = 30) -> list[np.ndarray]:
    t = np.arange(n * CHUNK) / RATE
    return np.split((0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), n)


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_streamed_format_round_trips(fmt: AudioFormat) -> None:
    rate = codecs.output_rate(fmt, RATE, None)
    encoder = codecs.encoder(fmt, RATE, rate)
    pieces = [encoder.encode(c) for c in chunks()] + [encoder.finish()]
    body = b"".join(pieces)
    decoded_rate, seconds = decode(body, fmt, rate)
    assert decoded_rate == rate
    assert seconds == pytest.approx(30 * CHUNK / RATE, abs=0.06)  # codecs add priming/padding frames
    if fmt in (AudioFormat.WAV, AudioFormat.PCM, AudioFormat.MP3, AudioFormat.AAC, AudioFormat.ULAW):
        assert sum(1 for p in pieces[:-1] if p) > 10, "bytes should leave chunk by chunk"


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_whole_file(fmt: AudioFormat) -> None:
    samples = np.concatenate(chunks())
    rate = codecs.output_rate(fmt, RATE, None)
    body = codecs.encode_whole(fmt, samples, RATE, rate)
    assert decode(body, fmt, rate)[1] == pytest.approx(len(samples) / RATE, abs=0.06)


def test_resampling_is_continuous_across_chunks() -> None:
    encoder = codecs.encoder(AudioFormat.PCM, RATE, 16000)
    body = b"".join(encoder.encode(c) for c in chunks()) + encoder.finish()
    assert len(body) // 2 == pytest.approx(30 * CHUNK * 16000 / RATE, abs=2)
    resampled = np.frombuffer(body, dtype="<i2") / 32767
    assert np.abs(np.diff(resampled[100:-100])).max() < 0.2  # a 330 Hz tone: no jumps at chunk seams


def test_output_rate_follows_the_codec() -> None:
    assert codecs.output_rate(AudioFormat.WAV, 44100, None) == 44100
    assert codecs.output_rate(AudioFormat.OPUS, 44100, None) == 48000
    assert codecs.output_rate(AudioFormat.MP3, 16000, None) == 16000
    assert codecs.output_rate(AudioFormat.FLAC, 44100, 22050) == 22050
    with pytest.raises(ValueError, match="opus supports"):
        codecs.output_rate(AudioFormat.OPUS, 44100, 44100)


@pytest.mark.parametrize(("fmt", "subtype"), [(AudioFormat.ULAW, "ULAW"), (AudioFormat.ALAW, "ALAW")])
def test_g711_is_8_khz_and_decodes_to_the_audio_sent(fmt: AudioFormat, subtype: str) -> None:
    """A second decoder (libsndfile's G.711) reads the stream back: 8 kHz by default, one byte a sample, and
    the samples within G.711's quantisation of the resampled input."""
    assert codecs.output_rate(fmt, RATE, None) == 8000 and codecs.output_rate(fmt, RATE, 16000) == 16000
    encoder = codecs.encoder(fmt, RATE, 8000)
    body = b"".join(encoder.encode(c) for c in chunks()) + encoder.finish()
    assert len(body) == pytest.approx(30 * CHUNK * 8000 / RATE, abs=2)
    decoded, _ = sf.read(io.BytesIO(body), format="RAW", subtype=subtype, samplerate=8000, channels=1)
    expected = soxr.resample(np.concatenate(chunks()), RATE, 8000, quality="HQ")
    assert np.abs(decoded[100:-100] - expected[100 : len(decoded) - 100]).max() < 0.02
    assert codecs.MEDIA_TYPES[fmt] in ("audio/PCMU", "audio/PCMA")


def test_streamed_wav_of_nothing_is_still_a_wav() -> None:
    encoder = codecs.encoder(AudioFormat.WAV, RATE, RATE)
    body = encoder.finish()
    assert sf.info(io.BytesIO(body)).frames == 0
