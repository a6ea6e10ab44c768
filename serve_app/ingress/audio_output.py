"""How an answer's audio is shaped: its format, rate and speaking rate checked against what the format can
carry, then the model's chunks stretched and encoded as they arrive (or the whole utterance at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.stretch import check_speed, stretch, stretcher
from serve_app.errors import InvalidField, PayloadTooLarge
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.timestamps import SegmentClock, TimedSegment, timed
from serve_app.metrics import RequestTrace
from serve_app.model.types import Chunk, ModelInfo, SynthesisRequest


@dataclass(frozen=True)
class Output:
    """How an answer is encoded."""

    format: AudioFormat
    sample_rate: int
    model: ModelInfo
    trace: RequestTrace
    speed: float = 1.0  # speaking rate, applied by time-stretch before encoding

    @property
    def media_type(self) -> str:
        return codecs.MEDIA_TYPES[self.format]

    def headers(self) -> dict[str, str]:
        return {"X-Sample-Rate": str(self.sample_rate), "X-Model": self.model.name}  # Serve adds X-Request-ID


async def output(
    client: ModelClient,
    fmt: AudioFormat,
    requested_rate: int | None,
    model: str,
    trace: RequestTrace,
    speed: float = 1.0,
) -> Output:
    """The format, rate and speaking rate of the answer, checked against what the format can carry."""
    check_speed(speed)
    trace.model = model
    info = await client.model_info(model)
    try:
        rate = codecs.output_rate(fmt, info.sample_rate, requested_rate)
    except ValueError as exc:
        raise InvalidField(str(exc), "sample_rate") from None
    return Output(fmt, rate, info, trace, speed)


async def chunks(
    client: ModelClient, request: SynthesisRequest, output: Output, by_sentence: bool = False
) -> AsyncIterator[Chunk]:
    """The model's audio for ``output`` as it is generated (``ModelClient.chunks``)."""
    return await client.chunks(request, output.model.name, output.trace, output.speed, by_sentence)


async def encoded_stream(
    client: ModelClient, request: SynthesisRequest, output: Output, clock: SegmentClock | None = None
) -> AsyncIterator[bytes | TimedSegment]:
    """The answer's bytes, in ``output``'s format, as they are generated; with ``clock`` (a request that asks
    where its sentences end), each segment timed in its place."""
    pieces = await chunks(client, request, output)
    return _encoded(output, pieces if clock is None else timed(pieces, clock))


async def _encoded(output: Output, pieces: AsyncIterator[Any]) -> AsyncIterator[bytes | TimedSegment]:
    encoder = codecs.encoder(output.format, output.model.sample_rate, output.sample_rate)
    pace = stretcher(output.speed, output.model.sample_rate)  # cheap enough for the event loop: <1 ms a chunk
    async with contextlib.aclosing(pieces):  # type: ignore[type-var]
        async for chunk in pieces:
            if not isinstance(chunk, np.ndarray):  # a segment's timestamps, in their place
                yield chunk
            elif data := encoder.encode(pace.feed(chunk)):
                yield data
        yield encoder.encode(pace.finish()) + encoder.finish()


async def whole_timed(
    client: ModelClient, request: SynthesisRequest, output: Output, clock: SegmentClock, max_seconds: float
) -> tuple[bytes, list[TimedSegment]]:
    """The whole answer, encoded, and its segments timed: the non-streaming API's audio (a sentence at a time,
    with retry_badcase), each sentence followed by where it ends. Held whole, so bounded: past ``max_seconds``
    of audio the generation stops and the answer is 413 naming ``text``."""
    pieces, segments, held = [], [], 0
    most = max_seconds * output.model.sample_rate * output.speed  # model samples: the answer is 1/speed as long
    items = timed(await chunks(client, request, output, by_sentence=True), clock)
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
    return await _whole_encoded(samples, output), segments


async def whole(client: ModelClient, request: SynthesisRequest, output: Output) -> bytes:
    """The whole answer, encoded in ``output``'s format."""
    return await _whole_encoded(await client.synthesize(request, output.model.name), output)


async def _whole_encoded(samples: np.ndarray, output: Output) -> bytes:
    """A whole utterance (at the model's rate) at ``output``'s speaking rate, in its format, counted."""
    if output.speed != 1.0:
        samples = await asyncio.to_thread(stretch, samples, output.speed, output.model.sample_rate)
    body = await asyncio.to_thread(
        codecs.encode_whole, output.format, samples, output.model.sample_rate, output.sample_rate
    )
    metrics.ingress().first_byte(output.trace)
    metrics.ingress().completed(output.trace, len(samples) / output.model.sample_rate)
    return body
