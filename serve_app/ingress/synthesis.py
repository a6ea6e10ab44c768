"""Between the routes and the model deployment: build the model request, call the handle, shape the audio.

Transport-free: the HTTP routers and the WebSocket route wrap what it returns (bytes, audio chunks)
in their own responses, so every transport shares its validation, admission and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.reference import AudioBounds, decode_upload
from serve_app.audio.stretch import check_speed, stretch, stretcher
from serve_app.config import AppConfig
from serve_app.errors import BadRequest, InvalidField, NotFound, Overloaded, PayloadTooLarge, ServiceError
from serve_app.ingress.schemas import OUTPUT_FIELDS, VOICE_FIELDS, TTSStreamForm
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest
from serve_app.tenants import Principal
from serve_app.voices import Voice, VoiceStore

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
OVERLOAD_RETRY_PAUSE_S = 0.05
# After the router refused a model's request, the next ones are refused without asking it, until one
# of this replica's streams of that model ends or this long has passed (another ingress replica's may).
FULL_FOR_S = 0.25


@contextlib.contextmanager
def model_errors() -> Iterator[None]:
    """Re-raise a client error raised inside a model replica as itself, not wrapped by Ray."""
    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, ServiceError):
            raise exc.cause from None
        raise


class SynthesisService:
    """The ingress's access to the model deployments, by model name."""

    def __init__(self, models: dict[str, DeploymentHandle], config: AppConfig) -> None:
        self._handles = models
        self.default_model = config.default
        self._limits = config.limits
        self._audio_bounds = AudioBounds(
            max_seconds=config.limits.max_prompt_audio_seconds,
            max_channels=config.limits.max_prompt_audio_channels,
            max_sample_rate=config.limits.max_prompt_audio_sample_rate,
            max_samples=config.limits.prompt_audio_sample_budget,
            timeout_s=config.limits.prompt_audio_decode_timeout_s,
        )
        self._infos: dict[str, ModelInfo] = {}
        self._full_until: dict[str, float] = {}  # monotonic time, by model
        self.voices = VoiceStore(config.voices_dir, config.access.quotas)
        self.voices.recover()

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

    def deployment_name(self, model: str) -> str:
        return self._handles[model].deployment_name

    async def model_info(self, model: str) -> ModelInfo:
        """The model's facts, asked once (they do not change for a deployment). The call is routed like
        a request, so it waits for a replica that is starting and is refused (503) past capacity."""
        if model not in self._infos:
            self._infos[model] = await self._retrying_refusals(model, self._handles[model].info.remote)
        return self._infos[model]

    def check_text_length(self, text: str, field: str) -> None:
        if len(text) > self._limits.max_text_chars:
            raise PayloadTooLarge(
                f"{field} has {len(text)} characters; the limit is {self._limits.max_text_chars}", field
            )

    async def from_form(
        self, form: TTSStreamForm, prompt_audio: bytes, reference_audio: bytes, trace: RequestTrace, caller: Principal
    ) -> tuple[SynthesisRequest, Output]:
        """What a /api/tts* form asks for (its uploads already read): the synthesis, and how to encode it."""
        model = self.resolve(form.model)
        output = await self.output(form.format, form.sample_rate, model, trace, form.speed)
        return await self._request_from_form(form, prompt_audio, reference_audio, trace, model, caller), output

    async def _request_from_form(
        self,
        form: TTSStreamForm,
        prompt_audio: bytes,
        reference_audio: bytes,
        trace: RequestTrace,
        model: str,
        caller: Principal,
    ) -> SynthesisRequest:
        self.check_text_length(form.text, "text")
        # the fields only VoxCPM2 models take (a 400 naming the first given on the others)
        await self.require_voxcpm2(
            model, {"instructions": form.instructions, "reference_audio": reference_audio or None}
        )
        prompt = await self.recording(prompt_audio, model, "prompt_audio", form.prompt_text)
        reference = await self.recording(reference_audio, model, "reference_audio")
        voice = await self.voice(form.voice_id, "voice_id", caller) if form.voice_id else None
        if voice is not None and (prompt is not None or reference is not None):
            field = "prompt_audio" if prompt is not None else "reference_audio"
            raise InvalidField(f"give either voice_id or {field}, not both", "voice_id")
        knobs = form.model_dump(exclude={*VOICE_FIELDS, *OUTPUT_FIELDS, "model"})  # the rest are voxcpm's names
        return SynthesisRequest(prompt=prompt, reference=reference, voice=voice, **trace.ids, **knobs)

    async def require_voxcpm2(self, model: str, fields: dict[str, object]) -> None:
        """A 400 naming the first given field that only VoxCPM2 models take, when ``model`` is not one,
        and the served models that take it."""
        given = [field for field, value in fields.items() if value is not None]
        info = await self.model_info(model)
        if not given or info.architecture == "voxcpm2":
            return
        infos = await asyncio.gather(*map(self.model_info, self._handles), return_exceptions=True)
        able = [i.name for i in infos if isinstance(i, ModelInfo) and i.architecture == "voxcpm2"]
        raise BadRequest(
            f"{given[0]}: model {model!r} ({info.architecture}) cannot take it; VoxCPM2 models can"
            + (f" (served here: {', '.join(able)})" if able else " (none is served here)"),
            given[0],
        )

    async def voice(self, id_or_name: str, field: str, caller: Principal) -> Voice:
        """A saved voice the caller may use, by id or name (another tenant's is a 404, as an absent one)."""
        return await asyncio.to_thread(self.voices.find, id_or_name, field, caller)

    @property
    def max_upload_bytes(self) -> int:
        return self._limits.max_prompt_audio_bytes

    async def reference(self, data: bytes, field: str) -> tuple[np.ndarray, int]:
        """An uploaded recording as mono float32 at its own rate, within the configured limits."""
        if not data:
            raise InvalidField(f"{field} is required", field)
        return await decode_upload(data, self._audio_bounds, field)

    async def recording(self, data: bytes, model: str, field: str, text: str | None = None) -> PromptAudio | None:
        """An uploaded prompt or reference recording (its bytes) at the model's prompt rate; none when not sent."""
        if not data:
            if text is not None:
                raise InvalidField(f"prompt_text was given without {field}", field)
            return None
        info = await self.model_info(model)
        samples, rate = await decode_upload(data, self._audio_bounds, field, info.prompt_sample_rate)
        return PromptAudio(samples=samples, sample_rate=rate, text=text)

    async def output(
        self, fmt: AudioFormat, requested_rate: int | None, model: str, trace: RequestTrace, speed: float = 1.0
    ) -> Output:
        """The format, rate and speaking rate of the answer, checked against what the format can carry."""
        check_speed(speed)
        trace.model = model
        info = await self.model_info(model)
        try:
            rate = codecs.output_rate(fmt, info.sample_rate, requested_rate)
        except ValueError as exc:
            raise InvalidField(str(exc), "sample_rate") from None
        return Output(fmt, rate, info, trace, speed)

    async def chunks(self, request: SynthesisRequest, output: Output) -> AsyncIterator[np.ndarray]:
        """The model's audio (float32 at the model's rate) as it is generated.

        The first chunk is awaited here, before anything is sent, so a refusal (bad prompt, overload)
        still becomes a clean error rather than a broken answer. Closing the iterator stops the generation.
        """
        handle = self._handles[output.model.name].options(stream=True)

        async def first_chunk() -> tuple[np.ndarray, DeploymentResponseGenerator]:
            chunks: DeploymentResponseGenerator = handle.stream.remote(request)
            try:
                with model_errors():
                    return await chunks.__anext__(), chunks
            except StopAsyncIteration:
                return np.zeros(0, dtype=np.float32), chunks
            except BaseException:
                chunks.cancel()
                raise

        first, chunks = await self._retrying_refusals(output.model.name, first_chunk)
        return self._traced(output, first, chunks)

    async def encoded_stream(self, request: SynthesisRequest, output: Output) -> AsyncIterator[bytes]:
        """The answer's bytes, in ``output``'s format, as they are generated (see :meth:`chunks`)."""
        return self._encoded(output, await self.chunks(request, output))

    async def _encoded(self, output: Output, chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
        encoder = codecs.encoder(output.format, output.model.sample_rate, output.sample_rate)
        pace = stretcher(output.speed, output.model.sample_rate)  # cheap enough for the event loop: <1 ms a chunk
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                if data := encoder.encode(pace.feed(chunk)):
                    yield data
            yield encoder.encode(pace.finish()) + encoder.finish()

    async def _traced(
        self, output: Output, first: np.ndarray, chunks: DeploymentResponseGenerator
    ) -> AsyncIterator[np.ndarray]:
        trace, recorder = output.trace, metrics.ingress()
        cadence = metrics.Cadence(recorder.stream_chunk_gap, trace.tags)
        cadence.tick()  # the first chunk, as the response starts
        frames = len(first)
        recorder.stream_opened(trace)
        try:
            yield first
            recorder.first_byte(trace)
            async for chunk in chunks:
                cadence.tick()
                frames += len(chunk)
                yield chunk
            recorder.completed(trace, frames / output.model.sample_rate / output.speed)
        except Exception:
            # The answer has started: all we can do is end it without a clean terminator.
            logger.exception("request %s: stream failed after the response started", trace.request_id)
            recorder.failed(trace, "stream_failed")
            raise
        finally:
            recorder.stream_closed(trace)
            chunks.cancel()  # a client disconnect cancels us here: stop the generation too
            self._full_until.pop(output.model.name, None)  # its slot is free

    async def synthesize(self, request: SynthesisRequest, model: str) -> np.ndarray:
        """The whole utterance at the model's output rate."""
        handle = self._handles[model]

        async def call() -> np.ndarray:
            with model_errors():
                return await handle.synthesize.remote(request)

        samples = await self._retrying_refusals(model, call)
        self._full_until.pop(model, None)  # its slot is free
        return samples

    async def whole(self, request: SynthesisRequest, output: Output) -> bytes:
        """The whole answer, encoded in ``output``'s format."""
        samples = await self.synthesize(request, output.model.name)
        if output.speed != 1.0:
            samples = await asyncio.to_thread(stretch, samples, output.speed, output.model.sample_rate)
        body = await asyncio.to_thread(
            codecs.encode_whole, output.format, samples, output.model.sample_rate, output.sample_rate
        )
        metrics.ingress().first_byte(output.trace)
        metrics.ingress().completed(output.trace, len(samples) / output.model.sample_rate)
        return body

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
                if attempt >= self._limits.overload_retries:
                    self._full_until[model] = time.monotonic() + FULL_FOR_S
                    raise Overloaded() from None
                await asyncio.sleep(OVERLOAD_RETRY_PAUSE_S * 2**attempt)
        raise AssertionError("unreachable")


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
