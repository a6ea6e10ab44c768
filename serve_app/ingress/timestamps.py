"""Timestamps for the answers that ask for them: each segment's exact bounds in the audio sent, and its words
heard by the aligner where one is configured (``source: "aligned"``) or estimated from the segment's exact
duration (``source: "estimated"``; ``serve_app/timing/``).

A segment is a sentence as the service speaks it. On the WebSocket its bounds are the samples sent for it;
over HTTP the model says where each sentence ends in the stream (``SegmentEnd``: the middle of the crossfade
between two sentences, the stream's end for the last). Times count seconds from the first sample of the
answer (the WebSocket: of the context), after any change of speaking rate (``speed``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from serve_app.model.types import Chunk, SegmentEnd
from serve_app.timing.aligner import Aligner
from serve_app.timing.words import Word, estimated

Mode = Literal["word", "segment"]


@dataclass(frozen=True)
class TimedSegment:
    index: int
    text: str
    start_s: float
    end_s: float
    source: str  # "aligned" | "estimated"
    words: list[Word]

    def words_public(self) -> list[dict]:
        return [word.public() for word in self.words]

    def bounds_public(self) -> dict:
        """The segment as the HTTP answers describe it, times in seconds to the millisecond."""
        return {
            "index": self.index,
            "text": self.text,
            "source": self.source,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
        }


async def timed_segment(
    aligner: Aligner | None,
    mode: Mode,
    index: int,
    text: str,
    audio: np.ndarray,
    rate: int,
    start_s: float,
    end_s: float,
) -> TimedSegment:
    """One segment's timestamps: ``start_s``..``end_s`` are its exact bounds; ``audio`` (at ``rate``) is what the
    aligner hears. In ``segment`` mode the one timestamp is the segment itself, its bounds the audio's own
    (``aligned``)."""
    if mode == "segment":
        return TimedSegment(index, text, start_s, end_s, "aligned", [Word(text, start_s, end_s)])
    if aligner is not None and len(audio):
        heard = await aligner.align(text, audio, rate)
        if heard is not None:
            scale = (end_s - start_s) / (len(audio) / rate)  # the audio as sent (a speaking rate, a lost tail)
            words = [
                Word(w.word, min(end_s, start_s + w.start_s * scale), min(end_s, start_s + w.end_s * scale))
                for w in heard
            ]
            return TimedSegment(index, text, start_s, end_s, "aligned", words)
    return TimedSegment(index, text, start_s, end_s, "estimated", estimated(text, start_s, end_s))


@dataclass
class SegmentClock:
    """Follows a model stream (model-rate audio and ``SegmentEnd`` marks) and times each segment as it ends."""

    aligner: Aligner | None
    mode: Mode
    rate: int  # the model's
    speed: float = 1.0
    _audio: list[np.ndarray] = field(default_factory=list)
    _held_from: int = 0  # the sample (model rate) the first held chunk starts at
    _segment_start: int = 0

    def heard(self, chunk: np.ndarray) -> None:
        if self.aligner is not None and self.mode == "word":  # kept only for the aligner to hear its words
            self._audio.append(chunk)

    async def ended(self, mark: SegmentEnd) -> TimedSegment:
        """The segment ``mark`` ends, timed; its audio let go."""
        held = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        mine = held[self._segment_start - self._held_from : mark.end - self._held_from]
        cut = min(mark.end, self._held_from + len(held))  # the end may lie in a crossfade not yet received
        self._audio, self._held_from = [held[cut - self._held_from :]], cut
        start_s, end_s = self._segment_start / self.rate / self.speed, mark.end / self.rate / self.speed
        self._segment_start = mark.end
        return await timed_segment(self.aligner, self.mode, mark.index, mark.text, mine, self.rate, start_s, end_s)


async def timed(chunks: AsyncIterator[Chunk], clock: SegmentClock) -> AsyncIterator[np.ndarray | TimedSegment]:
    """A model stream with each ``SegmentEnd`` replaced by its segment, timed."""
    async for item in chunks:
        if isinstance(item, SegmentEnd):
            yield await clock.ended(item)
        else:
            clock.heard(item)
            yield item


def json_with_audio(audio: bytes, described: dict) -> bytes:
    """``{"audio_base64": ..., **described}`` as JSON bytes, the audio's base64 spliced in rather than serialized
    with the rest: it is held once, not once more per encoding step (str, JSON text, bytes)."""
    tail = json.dumps(described, ensure_ascii=False, separators=(",", ":")).encode()[1:]
    return b'{"audio_base64":"' + base64.b64encode(audio) + b'",' + tail
