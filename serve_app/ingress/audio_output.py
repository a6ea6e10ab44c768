"""The model's audio as the answer's bytes: stretched to the speaking rate and encoded in the answer's format as
the chunks arrive, or the whole utterance at once (``outputs.Output`` says how). Knows nothing of where the
chunks come from (the route hands them over from the model client) or where the bytes go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.stretch import stretch, stretcher
from serve_app.errors import PayloadTooLarge
from serve_app.ingress.outputs import Output
from serve_app.ingress.timestamps import SegmentClock, TimedSegment, timed
from serve_app.model.types import Chunk


def encoded(
    output: Output, chunks: AsyncIterator[Chunk], clock: SegmentClock | None = None
) -> AsyncIterator[bytes | TimedSegment]:
    """The answer's bytes, in ``output``'s format, as the chunks arrive; with ``clock`` (a request that asks
    where its sentences end), each segment timed in its place."""
    return _encoded(output, chunks if clock is None else timed(chunks, clock))


async def _encoded(output: Output, pieces: AsyncIterator[Any]) -> AsyncIterator[bytes | TimedSegment]:
    encoder = codecs.encoder(output.format, output.model.sample_rate, output.sample_rate)
    pace = stretcher(output.speed, output.model.sample_rate)  # cheap enough for the event loop (stretch.py)
    async with contextlib.aclosing(pieces):  # type: ignore[type-var]
        async for chunk in pieces:
            if not isinstance(chunk, np.ndarray):  # a segment's timestamps, in their place
                yield chunk
            elif data := encoder.encode(pace.feed(chunk)):
                yield data
        yield encoder.encode(pace.finish()) + encoder.finish()


async def whole_timed(
    output: Output, sentences: AsyncIterator[Chunk], clock: SegmentClock, max_seconds: float
) -> tuple[bytes, list[TimedSegment]]:
    """The whole answer, encoded, and its segments timed, from the model's audio a sentence at a time (each
    followed by where it ends). Held whole, so bounded: past ``max_seconds`` of audio the generation stops and
    the answer is 413 naming ``text``."""
    pieces, segments, held = [], [], 0
    most = max_seconds * output.model.sample_rate * output.speed  # model samples: the answer is 1/speed as long
    items = timed(sentences, clock)
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, TimedSegment):
                segments.append(item)
                continue
            held += len(item)
            if held > most:
                raise PayloadTooLarge(
                    f"text makes more than {max_seconds:g} s of audio, the most this route answers with in one "
                    "JSON body; stream it instead (/v1/audio/speech with stream_format sse, or the WebSocket)",
                    "text",
                )
            pieces.append(item)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    pieces.clear()  # the one copy left is ``samples``
    return await _encoded_whole(output, samples), segments  # counted by the model client, as a stream is


async def whole(output: Output, samples: np.ndarray) -> bytes:
    """A whole utterance (at the model's rate) at ``output``'s speaking rate, in its format, counted."""
    body = await _encoded_whole(output, samples)
    metrics.ingress().first_byte(output.trace)
    metrics.ingress().completed(output.trace, len(samples) / output.model.sample_rate / output.speed)
    return body


async def _encoded_whole(output: Output, samples: np.ndarray) -> bytes:
    if output.speed != 1.0:
        samples = await asyncio.to_thread(stretch, samples, output.speed, output.model.sample_rate)
    return await asyncio.to_thread(
        codecs.encode_whole, output.format, samples, output.model.sample_rate, output.sample_rate
    )
