"""The ingress's client of the model deployments, by model name: their facts, and the calls that generate.

It turns Serve's back-pressure into the contract's 503 (asking the router again first, since it also
refuses requests that arrive together while it assigns the first), awaits a stream's first chunk before
the answer starts (so a refusal is still a clean error), and times the stream for the metrics. Transport-
free: the HTTP routers and the WebSocket wrap what it returns in their own responses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import numpy as np
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app import metrics
from serve_app.errors import NotFound, Overloaded
from serve_app.ingress.outputs import Output
from serve_app.model import capabilities
from serve_app.model.remote_errors import model_errors
from serve_app.model.types import Chunk, ModelInfo, SynthesisRequest

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
OVERLOAD_RETRY_PAUSE_S = 0.05
# After the router refused a model's request, the next ones are refused without asking it, until one
# of this replica's streams of that model ends or this long has passed (another ingress replica's may).
FULL_FOR_S = 0.25


class ModelClient:
    def __init__(self, handles: dict[str, DeploymentHandle], default_model: str, overload_retries: int) -> None:
        self._handles = handles
        self.default_model = default_model
        self._overload_retries = overload_retries
        self._infos: dict[str, ModelInfo] = {}
        self._full_until: dict[str, float] = {}  # monotonic time, by model

    @property
    def model_names(self) -> list[str]:
        return list(self._handles)

    def resolve(self, name: str | None, field: str = "model") -> str:
        """The model a request asks for (none: the default), or a 404 naming the field."""
        if name is None or name == "":
            return self.default_model
        if name not in self._handles:
            raise NotFound(f"model {name!r} is not served here; served: {self.model_names}", field)
        return name

    def every_model_full(self) -> bool:
        """Whether a synthesis request would be refused whatever model it names (the edge asks, so a
        flood past capacity is answered before any form is parsed)."""
        return all(map(self._is_full, self._handles))

    def _is_full(self, model: str) -> bool:
        return self._full_until.get(model, 0.0) > time.monotonic()

    async def model_info(self, model: str) -> ModelInfo:
        """The model's facts, asked once (they do not change for a deployment). The call is routed like
        a request, so it waits for a replica that is starting and is refused (503) past capacity."""
        if model not in self._infos:
            self._infos[model] = await self._retrying_refusals(model, self._handles[model].info.remote)
        return self._infos[model]

    async def require(self, model: str, fields: Mapping[str, object]) -> None:
        """A 400 naming the first given field ``model`` cannot take (``capabilities.py``), and the served models
        that can."""
        info = await self.model_info(model)
        if (field := capabilities.unsupported(info, fields)) is None:
            return
        infos = await asyncio.gather(*map(self.model_info, self._handles), return_exceptions=True)
        able = [i.name for i in infos if isinstance(i, ModelInfo) and not capabilities.unsupported(i, {field: True})]
        capabilities.require(info, fields, able)

    async def chunks(
        self, request: SynthesisRequest, output: Output, by_sentence: bool = False
    ) -> AsyncIterator[Chunk]:
        """The model's audio (float32 at its rate) as it is generated, with where each sentence ends if the
        request asks (``segments``); ``by_sentence``: a sentence at a time, as the non-streaming API makes
        it (``SegmentEnd`` after each). ``output`` names the model and the rate the audio will be played at
        (for the audio seconds counted).

        The first chunk is awaited here, before anything is sent, so a refusal (bad prompt, overload)
        still becomes a clean error rather than a broken answer. Closing the iterator stops the generation.
        """
        model = output.model.name
        handle = self._handles[model].options(stream=True)
        method = handle.sentences if by_sentence else handle.stream

        async def first_chunk() -> tuple[Chunk, DeploymentResponseGenerator]:
            chunks: DeploymentResponseGenerator = method.remote(request)
            try:
                with model_errors():
                    return await chunks.__anext__(), chunks
            except StopAsyncIteration:
                return np.zeros(0, dtype=np.float32), chunks
            except BaseException:
                chunks.cancel()
                raise

        first, chunks = await self._retrying_refusals(model, first_chunk)
        return self._traced(output, first, chunks)

    async def check_adapter(self, model: str, path: str) -> None:
        """A 400 naming ``weights`` unless the file at ``path`` (on the storage every replica sees) is an adapter
        of ``model``'s LoRA shape: a model replica, which has the LoRA layers, checks it."""

        async def call() -> None:
            with model_errors():
                await self._handles[model].check_adapter.remote(path)

        await self._retrying_refusals(model, call)

    async def synthesize(self, request: SynthesisRequest, model: str) -> np.ndarray:
        """The whole utterance at the model's output rate."""
        handle = self._handles[model]

        async def call() -> np.ndarray:
            with model_errors():
                return await handle.synthesize.remote(request)

        samples = await self._retrying_refusals(model, call)
        self._full_until.pop(model, None)  # its slot is free
        return samples

    async def _traced(self, output: Output, first: Chunk, chunks: DeploymentResponseGenerator) -> AsyncIterator[Chunk]:
        recorder, info, trace, speed = metrics.ingress(), output.model, output.trace, output.speed
        cadence = metrics.Cadence(recorder.stream_chunk_gap, trace.tags)
        cadence.tick()  # the first chunk, as the response starts
        frames = len(first) if isinstance(first, np.ndarray) else 0
        recorder.stream_opened(trace)
        try:
            yield first
            recorder.first_byte(trace)
            async for chunk in chunks:
                if isinstance(chunk, np.ndarray):  # not a sentence's end
                    cadence.tick()
                    frames += len(chunk)
                yield chunk
            recorder.completed(trace, frames / info.sample_rate / speed)
        except Exception:
            # The answer has started: all we can do is end it without a clean terminator.
            logger.exception("request %s: stream failed after the response started", trace.request_id)
            recorder.failed(trace, "stream_failed")
            raise
        finally:
            recorder.stream_closed(trace)
            chunks.cancel()  # a client disconnect cancels us here: stop the generation too
            self._full_until.pop(info.name, None)  # its slot is free

    async def _retrying_refusals(self, model: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again after a short pause when Serve's router refused it for a full queue: it also
        refuses requests that arrive together while it assigns the first. Past ``limits.overload_retries``
        the refusal becomes the client's 503 (ours: Serve answers its own BackPressureError in plain text). A
        refusal never reaches a model replica, so retrying is cheap."""
        for attempt in itertools.count():
            if self._is_full(model):
                raise Overloaded()
            try:
                return await call()
            except BackPressureError:
                if attempt >= self._overload_retries:
                    self._full_until[model] = time.monotonic() + FULL_FOR_S
                    raise Overloaded() from None
                await asyncio.sleep(OVERLOAD_RETRY_PAUSE_S * 2**attempt)
        raise AssertionError("unreachable")
