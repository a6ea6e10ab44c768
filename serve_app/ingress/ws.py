"""``WebSocket /api/tts/ws``: text in as a language model writes it, speech out sentence by sentence.

One socket is one conversation. Its text goes into a :class:`SentenceBuffer` per context (at most
``max_contexts`` open at once, each forgotten once done, cancelled or failed: a client could otherwise
open one per message and make every message cost them all); each complete sentence becomes one
streaming call to the model deployment through the same model client as the HTTP routes
(admission, load shedding, batching and metrics apply alike), spoken in order by one speaker task, so
binary frames always belong to the last ``segment`` announced. The edge middleware has checked the
key, rate and capacity before this runs.

Two tasks per socket: a reader that only receives (a cancelled ``receive`` through Serve's proxy
could lose a message, so it is never cancelled mid-wait), and the speaker. The conversation loop
reacts to messages and timers; a ``cancel`` stops the speaker's current sentence and waits for it
to stop before ``cancelled`` is sent, so no frame of that context can follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.config import AppConfig, WebSocketConfig
from serve_app.errors import BadRequest, PayloadTooLarge, RateLimited, ServiceError, SessionTimeout, StreamFailed
from serve_app.ingress import audio_output
from serve_app.ingress.audio_output import Output
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder
from serve_app.ingress.edge import KEY_SUBPROTOCOL
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.timestamps import Mode, timed_segment
from serve_app.ingress.ws_messages import Cancel, Close, End, Flush, Init, Text, parse
from serve_app.metrics import RequestTrace
from serve_app.model.plan import own_voice
from serve_app.model.types import PromptAudio, SynthesisRequest
from serve_app.store.voice_store import Voice
from serve_app.text.stream import SentenceBuffer
from serve_app.timing.aligner import Aligner

logger = logging.getLogger("ray.serve")

ROUTE = "/api/tts/ws"
TIMESTAMPS_HOLD_S = 0.02  # a segment's last audio, held until its timestamps are sent
# init.encoding -> the audio format of the binary frames, and its bytes per sample
ENCODINGS = {"pcm_s16le": AudioFormat.PCM, "ulaw": AudioFormat.ULAW, "alaw": AudioFormat.ALAW}
BYTES_PER_SAMPLE = {AudioFormat.PCM: 2, AudioFormat.ULAW: 1, AudioFormat.ALAW: 1}
# Close codes of the contract (RFC 6455 leaves 4000-4999 to applications).
# 4401 (auth) never reaches this module: the edge refuses a bad key with a 401 before the socket is accepted.
CLOSE_NORMAL, CLOSE_BAD_MESSAGE, CLOSE_TIMEOUT, CLOSE_RATE = 1000, 4400, 4408, 4429
CLOSE_TRY_LATER = 1013  # RFC 6455's "try again later": the service could not start the conversation
IDLE = "speaker.idle"  # put in the inbox by the speaker, not a client message

router = APIRouter(tags=["websocket"])


class Fatal(Exception):
    """Ends the conversation: an ``error`` event, then the close code."""

    def __init__(self, close_code: int, error: ServiceError) -> None:
        super().__init__(close_code, error)
        self.close_code = close_code
        self.error = error


@dataclass(eq=False)
class Context:
    """One utterance in one voice: its unspoken text and how much of it has been sent."""

    id: str
    buffer: SentenceBuffer
    anchor: PromptAudio | None = None  # the first sentence's audio, the prompt of the rest (plan.own_voice)
    samples: int = 0  # sent, at the output rate
    held: bytes = b""  # the end of the sentence's audio, kept until its timestamps have gone
    segments: int = 0
    queued_chars: int = 0  # cut into sentences, waiting for the speaker
    counted: int = 0  # its share of Conversation.buffered
    cancelled: bool = False
    started: float | None = None  # monotonic time of its first audio


@dataclass
class Settings:
    """What ``init`` fixed for the whole socket."""

    output: Output
    voice: Voice | None
    knobs: dict[str, Any]  # every sentence's request fields: voxcpm's settings, the instructions, the adapter
    max_wait_s: float
    timestamps: Mode | None = None  # a `timestamps` message per segment: its words, or the segment itself


@dataclass
class Speaker:
    """Sentences spoken one at a time, in order; ``None`` ends a context (``done``)."""

    queue: asyncio.Queue[tuple[Context, str | None]] = field(default_factory=asyncio.Queue)
    speaking: Context | None = None
    sentence: asyncio.Task | None = None
    idle_since: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return self.speaking is not None or not self.queue.empty()


@router.websocket(ROUTE)
async def tts_ws(
    websocket: WebSocket,
    models: Annotated[ModelClient, Depends(model_client)],
    requests: Annotated[RequestBuilder, Depends(request_builder)],
    config: Annotated[AppConfig, Depends(app_config)],
    heard_by: Annotated[Aligner | None, Depends(aligner)],
) -> None:
    await Conversation(websocket, models, requests, config.websocket, heard_by).run()


class Conversation:
    def __init__(
        self,
        websocket: WebSocket,
        models: ModelClient,
        requests: RequestBuilder,
        limits: WebSocketConfig,
        aligner: Aligner | None = None,
    ) -> None:
        self.ws = websocket
        self.models = models
        self.requests = requests
        self.limits = limits
        self.aligner = aligner
        self.id = websocket.headers.get("x-request-id") or uuid.uuid4().hex
        self.contexts: dict[str, Context] = {}
        self.speaker = Speaker()
        self.settings: Settings | None = None
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.started = time.monotonic()
        self.last_message = self.started
        self.ended: dict[str, list[Context]] = {}  # after `end`, until `done`, by id (ended again: more)
        self.buffered = 0  # characters received and not yet spoken, all contexts: kept, never summed
        self.tasks: list[asyncio.Task] = []  # the reader, and the speaker once `init` came
        self._rate = MessageRate(limits.max_messages_per_s)

    async def run(self) -> None:
        await self.ws.accept(subprotocol=chosen_subprotocol(self.ws.scope.get("subprotocols", [])))
        self.tasks.append(asyncio.create_task(self._read()))
        try:
            await self._converse()
            await self._close(CLOSE_NORMAL)
        except Fatal as fatal:
            metrics.ingress().failed(self._trace(), fatal.error.code)
            await self._send_error(fatal.error, fatal=True)
            await self._close(fatal.close_code, fatal.error.message)
        except (WebSocketDisconnect, ConnectionError):
            pass  # the client went away: the finally below stops its generation
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # --- receiving -------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Every client frame into the inbox, rate-limited; a disconnect is the last one."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.receive" and not self._rate.allow():
                message = {"type": "rate_limited"}
            self.inbox.put_nowait(message)
            if message["type"] in ("websocket.disconnect", "rate_limited"):
                return

    async def _next(self, timeout_s: float) -> Init | Text | Flush | End | Cancel | Close | None:
        """The next client message, or None if ``timeout_s`` passed first."""
        try:
            message = await asyncio.wait_for(self.inbox.get(), max(timeout_s, 0.0))
        except TimeoutError:
            return None
        if message["type"] == IDLE:
            return None  # the speaker has nothing left: time for the timers
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message["type"] == "rate_limited":
            raise Fatal(CLOSE_RATE, RateLimited(f"more than {self.limits.max_messages_per_s} messages a second"))
        if message.get("text") is None:
            raise Fatal(CLOSE_BAD_MESSAGE, BadRequest("binary frames are not accepted; send JSON text frames"))
        if len(message["text"].encode()) > self.limits.max_message_bytes:
            limit = self.limits.max_message_bytes
            raise Fatal(CLOSE_BAD_MESSAGE, PayloadTooLarge(f"a message is larger than {limit} bytes"))
        self.last_message = time.monotonic()
        try:
            return parse(message["text"])
        except BadRequest as exc:
            raise Fatal(CLOSE_BAD_MESSAGE, exc) from None

    # --- the conversation ------------------------------------------------------------------------

    async def _converse(self) -> None:
        first = await self._next(self.limits.init_timeout_s)
        if first is None:
            raise Fatal(CLOSE_TIMEOUT, BadRequest(f"no init message within {self.limits.init_timeout_s} s", "type"))
        if not isinstance(first, Init):
            raise Fatal(CLOSE_BAD_MESSAGE, BadRequest("the first message must be init", "type"))
        await self._init(first)
        self.tasks.append(asyncio.create_task(self._speak_in_turn()))
        while True:
            message = await self._next(self._until_next_timer())
            if message is None:
                self._on_timers()
            elif isinstance(message, Close):
                return
            elif isinstance(message, Init):
                raise Fatal(CLOSE_BAD_MESSAGE, BadRequest("init may be sent once, first", "type"))
            else:
                await self._on_message(message)

    async def _init(self, init: Init) -> None:
        try:
            model = self.models.resolve(init.model)
            instructions = (init.instructions or "").strip() or None
            await self.models.require(model, {"instructions": instructions})  # VoxCPM2: a voice designed, or styled
            voice = await self.requests.voice(init.voice_id, "voice_id", caller(self.ws)) if init.voice_id else None
            adapter = await self.requests.adapter(init.adapter, voice, model, caller(self.ws))
            fmt = ENCODINGS[init.encoding]
            output = await audio_output.output(self.models, fmt, init.sample_rate, model, self._trace())
        except ServiceError as exc:
            raise Fatal(CLOSE_BAD_MESSAGE if exc.status < 500 else CLOSE_TRY_LATER, exc) from None
        knobs = {**init.knobs(), "instructions": instructions, "adapter": adapter}
        self.settings = Settings(output, voice, knobs, init.max_wait_ms / 1000, init.timestamps)
        await self._send(
            type="ready",
            sample_rate=output.sample_rate,
            encoding=init.encoding,
            model=model,
            limits={**self.limits.model_dump(exclude={"max_connections"}), "max_wait_ms": init.max_wait_ms},
        )

    async def _on_message(self, message: Text | Flush | End | Cancel) -> None:
        if isinstance(message, Cancel):
            await self._cancel(message.context_id)
            return
        if isinstance(message, Text):
            await self._on_text(message)
            return
        context = self.contexts.get(message.context_id)  # a flush of no context creates none
        if context is not None:
            self._enqueue(context, context.buffer.flush())
        if isinstance(message, End):  # text for this id from now on starts a new context
            ended = self.contexts.pop(message.context_id, None) or self._new_context(message.context_id)
            self.ended.setdefault(ended.id, []).append(ended)
            self.speaker.queue.put_nowait((ended, None))  # its `done`, in turn (total_samples 0 if never opened)

    async def _on_text(self, message: Text) -> None:
        """Text for a context, opening it if it is new and there is room (``max_contexts``: each open one
        costs memory and timer work); empty text opens none."""
        if not message.text:
            return
        error: ServiceError | None = None
        context = self.contexts.get(message.context_id)
        if self.buffered + len(message.text) > self.limits.max_buffered_chars:
            error = PayloadTooLarge(
                f"more than {self.limits.max_buffered_chars} characters would wait to be spoken; this text "
                "was not added: send it again once audio has caught up",
                "text",
            )
        elif context is None and len(self.contexts) >= self.limits.max_contexts:
            error = RateLimited(
                f"at most {self.limits.max_contexts} contexts may be open at once; this text was not added: "
                "end or cancel a context to make room",
                "context_id",
            )
        if error is not None:
            await self._send_error(error, fatal=False, context_id=message.context_id)
            return
        if context is None:
            context = self.contexts[message.context_id] = self._new_context(message.context_id)
        self._enqueue(context, *context.buffer.append(message.text))

    def _new_context(self, context_id: str) -> Context:
        assert self.settings is not None
        return Context(context_id, SentenceBuffer(self.settings.max_wait_s))

    def _enqueue(self, context: Context, *sentences: str | None) -> None:
        for sentence in filter(None, sentences):
            context.queued_chars += len(sentence)
            self.speaker.queue.put_nowait((context, sentence))
        self._count(context)

    def _count(self, context: Context) -> None:
        """Bring ``buffered`` up to date with one context's share: a message costs no sum over contexts."""
        share = len(context.buffer) + context.queued_chars
        self.buffered += share - context.counted
        context.counted = share

    def _forget(self, context: Context) -> None:
        """A context done, cancelled or failed: its text no longer counts, and the conversation keeps no
        reference to it (the speaker's queue drops its entries as it reaches them)."""
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]
        ended = self.ended.get(context.id, [])
        if context in ended:
            ended.remove(context)
            if not ended:
                del self.ended[context.id]
        self.buffered -= context.counted
        context.counted = 0

    async def _cancel(self, context_id: str) -> None:
        """Barge-in: drop the context's text, stop its sentence, and only then say ``cancelled``
        (the contexts by that id: one still open, and any ended but not yet done)."""
        targets = self.ended.pop(context_id, [])
        if (open_context := self.contexts.get(context_id)) is not None:
            targets.append(open_context)
        for context in targets:
            await self._stop(context)
        sent = max((c.samples for c in targets), default=0)
        await self._send(type="cancelled", context_id=context_id, sent_samples=sent)

    async def _stop(self, context: Context) -> None:
        context.cancelled = True
        self._forget(context)
        sentence = self.speaker.sentence
        if self.speaker.speaking is context and sentence is not None:
            sentence.cancel()
            await asyncio.wait({sentence})

    # --- timers ----------------------------------------------------------------------------------

    def _until_next_timer(self) -> float:
        now = time.monotonic()
        deadlines = [self.started + self.limits.max_session_s]
        if not self.speaker.busy:
            deadlines.append(max(self.last_message, self.speaker.idle_since) + self.limits.idle_timeout_s)
            deadlines += filter(None, (c.buffer.deadline() for c in self.contexts.values()))
        return min(deadlines) - now

    def _on_timers(self) -> None:
        now = time.monotonic()
        if now >= self.started + self.limits.max_session_s:
            raise Fatal(CLOSE_TIMEOUT, SessionTimeout(f"a conversation lasts at most {self.limits.max_session_s} s"))
        if self.speaker.busy:
            return  # words waiting while audio plays cost nothing: let them become a whole sentence
        if now >= max(self.last_message, self.speaker.idle_since) + self.limits.idle_timeout_s:
            raise Fatal(CLOSE_TIMEOUT, SessionTimeout(f"no message for {self.limits.idle_timeout_s} s"))
        for context in self.contexts.values():
            self._enqueue(context, context.buffer.overdue())

    # --- speaking --------------------------------------------------------------------------------

    async def _speak_in_turn(self) -> None:
        speaker = self.speaker
        while True:
            if speaker.queue.empty():
                self.inbox.put_nowait({"type": IDLE})  # the timers wait while it speaks: wake them
            context, sentence = await speaker.queue.get()
            if context.cancelled:
                continue
            if sentence is None:
                self._forget(context)
                await self._send(type="done", context_id=context.id, total_samples=context.samples)
                continue
            context.queued_chars -= len(sentence)
            self._count(context)
            speaker.speaking, speaker.sentence = context, asyncio.create_task(self._speak(context, sentence))
            try:
                await asyncio.wait({speaker.sentence})  # a cancel stops the sentence, not the speaker
                if not speaker.sentence.cancelled() and (exc := speaker.sentence.exception()) is not None:
                    raise exc
            finally:
                if speaker.sentence.done():
                    speaker.speaking, speaker.sentence, speaker.idle_since = None, None, time.monotonic()
                else:  # the speaker itself was cancelled: the socket is closing
                    speaker.sentence.cancel()
            await self._paced(context)

    async def _speak(self, context: Context, sentence: str) -> None:
        """One sentence: ``segment``, its audio, ``segment_end``; a refusal ends the context with an ``error``."""
        assert self.settings is not None
        index, trace = context.segments, self._trace(f"{self.id}-{context.id}-{context.segments}")
        settled = self.settings.output
        output = Output(settled.format, settled.sample_rate, settled.model, trace)
        request = SynthesisRequest(
            text=sentence, prompt=context.anchor, voice=self.settings.voice, **trace.ids, **self.settings.knobs
        )
        try:
            chunks = await audio_output.chunks(self.models, request, output)
        except ServiceError as exc:
            metrics.ingress().failed(trace, exc.code)
            self._drop(context)
            await self._send_error(exc, fatal=False, context_id=context.id)
            return
        context.segments += 1
        await self._send(
            type="segment", context_id=context.id, index=index, text=sentence, start_sample=context.samples
        )
        start = context.samples
        try:
            audio = await self._send_audio(context, output, chunks)
        except (WebSocketDisconnect, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - whatever broke the model's stream (the service logged it), not the client
            self._drop(context)
            await self._send_error(StreamFailed(f"the generation of {trace.request_id} failed"), False, context.id)
            return
        if self.settings.timestamps is not None:  # before the sentence's last frame, which was held for it
            await self._send_timestamps(context, index, sentence, audio, output, start)
            await self._send_frame(context, b"", hold=0)
        await self._send(type="segment_end", context_id=context.id, index=index, end_sample=context.samples)
        if context.anchor is None and self.settings.voice is None and len(audio):
            context.anchor = own_voice(audio, output.model, sentence, self.settings.knobs["instructions"])

    def _drop(self, context: Context) -> None:
        """A context the service could not speak: the ``error`` sent for it ends it."""
        context.cancelled = True
        self._forget(context)

    async def _send_audio(self, context: Context, output: Output, chunks: Any) -> np.ndarray:
        """The sentence's audio as binary frames in the socket's encoding (with timestamps asked for, all but its
        last ``TIMESTAMPS_HOLD_S``, which wait for them); the model's samples, kept for the anchor and the
        aligner."""
        assert self.settings is not None
        encoder = codecs.encoder(output.format, output.model.sample_rate, output.sample_rate)
        keep = context.anchor is None or (self.settings.timestamps == "word" and self.aligner is not None)
        width = BYTES_PER_SAMPLE[output.format]
        hold = round(TIMESTAMPS_HOLD_S * output.sample_rate) * width if self.settings.timestamps else 0
        kept: list[np.ndarray] = []
        async with contextlib.aclosing(chunks):  # closing it (a cancel, a disconnect) stops the generation
            async for chunk in chunks:
                if keep:
                    kept.append(chunk)
                await self._send_frame(context, encoder.encode(chunk), hold)
            await self._send_frame(context, encoder.finish(), hold)
        return np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)

    async def _send_frame(self, context: Context, data: bytes, hold: int) -> None:
        """``data`` after what was held, all but its last ``hold`` bytes, which are held."""
        data, context.held = context.held + data, b""
        if hold:
            data, context.held = data[:-hold], data[-hold:]
        if data:
            if context.started is None:
                context.started = time.monotonic()
            await self.ws.send_bytes(data)
            assert self.settings is not None
            context.samples += len(data) // BYTES_PER_SAMPLE[self.settings.output.format]

    async def _send_timestamps(
        self, context: Context, index: int, sentence: str, audio: np.ndarray, output: Output, start: int
    ) -> None:
        """The segment's ``timestamps``, in seconds from the context's first sample: its exact bounds the samples
        sent for it (and the tail still held), its words heard or estimated (``timestamps.py``)."""
        assert self.settings is not None and self.settings.timestamps is not None
        end = context.samples + len(context.held) // BYTES_PER_SAMPLE[output.format]
        rate = output.sample_rate
        timed = await timed_segment(
            self.aligner,
            self.settings.timestamps,
            index,
            sentence,
            audio,
            output.model.sample_rate,
            start / rate,
            end / rate,
        )
        words = timed.words_public()
        await self._send(type="timestamps", context_id=context.id, index=index, source=timed.source, words=words)

    async def _paced(self, context: Context) -> None:
        """Wait while the context's audio is more than ``max_audio_ahead_s`` ahead of real time."""
        if context.started is None or self.settings is None:
            return
        played = time.monotonic() - context.started
        ahead = context.samples / self.settings.output.sample_rate - played
        if ahead > self.limits.max_audio_ahead_s:
            await asyncio.sleep(ahead - self.limits.max_audio_ahead_s)

    # --- sending ---------------------------------------------------------------------------------

    async def _send(self, **event: Any) -> None:
        await self.ws.send_text(json.dumps(event, ensure_ascii=False))

    async def _send_error(self, error: ServiceError, fatal: bool, context_id: str | None = None) -> None:
        event: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message, "fatal": fatal}
        if error.field:
            event["field"] = error.field
        if context_id is not None:
            event["context_id"] = context_id
        if error.retry_after_s is not None:
            event["retry_after_s"] = error.retry_after_s
        with contextlib.suppress(WebSocketDisconnect, ConnectionError, RuntimeError):  # it may be gone already
            await self._send(**event)

    async def _close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, ConnectionError, RuntimeError):
                await self.ws.close(code, reason[:120])  # a close reason is at most 123 bytes

    def _trace(self, request_id: str | None = None) -> RequestTrace:
        model = self.settings.output.model.name if self.settings else "none"
        return RequestTrace(request_id=request_id or self.id, route=ROUTE, model=model)


class MessageRate:
    """At most ``per_second`` messages in any one-second window. Hand-written: the ``limits`` library's
    memory storage keeps an entry for every key it has seen, and each socket would be a new key."""

    def __init__(self, per_second: int) -> None:
        self._times: deque[float] = deque(maxlen=per_second)

    def allow(self) -> bool:
        now = time.monotonic()
        if len(self._times) == self._times.maxlen and now - self._times[0] < 1.0:
            return False
        self._times.append(now)
        return True


def chosen_subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to accept: a browser that offered some fails the socket unless one is chosen.
    The first that is not a key, else the ``bearer.KEY`` itself (the client offered only that)."""
    plain = [name for name in offered if not name.startswith(KEY_SUBPROTOCOL)]
    return (plain or offered or [None])[0]
