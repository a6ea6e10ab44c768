"""How an answer's audio is shaped: its format, rate and speaking rate checked against what the format can
carry, then the model's chunks stretched and encoded as they arrive (or the whole utterance at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.stretch import check_speed, stretch, stretcher
from serve_app.errors import InvalidField
from serve_app.ingress.model_client import ModelClient
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo, SynthesisRequest


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


async def chunks(client: ModelClient, request: SynthesisRequest, output: Output) -> AsyncIterator[np.ndarray]:
    """The model's audio for ``output`` as it is generated (``ModelClient.chunks``)."""
    return await client.chunks(request, output.model.name, output.trace, output.speed)


async def encoded_stream(client: ModelClient, request: SynthesisRequest, output: Output) -> AsyncIterator[bytes]:
    """The answer's bytes, in ``output``'s format, as they are generated."""
    return _encoded(output, await chunks(client, request, output))


async def _encoded(output: Output, pieces: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    encoder = codecs.encoder(output.format, output.model.sample_rate, output.sample_rate)
    pace = stretcher(output.speed, output.model.sample_rate)  # cheap enough for the event loop: <1 ms a chunk
    async with contextlib.aclosing(pieces):  # type: ignore[type-var]
        async for chunk in pieces:
            if data := encoder.encode(pace.feed(chunk)):
                yield data
        yield encoder.encode(pace.finish()) + encoder.finish()


async def whole(client: ModelClient, request: SynthesisRequest, output: Output) -> bytes:
    """The whole answer, encoded in ``output``'s format."""
    samples = await client.synthesize(request, output.model.name)
    if output.speed != 1.0:
        samples = await asyncio.to_thread(stretch, samples, output.speed, output.model.sample_rate)
    body = await asyncio.to_thread(
        codecs.encode_whole, output.format, samples, output.model.sample_rate, output.sample_rate
    )
    metrics.ingress().first_byte(output.trace)
    metrics.ingress().completed(output.trace, len(samples) / output.model.sample_rate)
    return body
