"""The speaker of a WebSocket conversation: the contexts' sentences spoken one at a time, in order, and what is
sent for them (the JSON events and the audio's binary frames).

Each sentence is one streaming call to the model deployment through the same model client as the HTTP routes
(admission, load shedding, batching and metrics apply alike), so binary frames always belong to the last
``segment`` announced. Positions count samples sent, at the socket's rate, from each context's first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from serve_app import metrics
from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.errors import ServiceError, StreamFailed
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.outputs import Output
from serve_app.ingress.timestamps import Mode, timed_segment
from serve_app.ingress.ws_contexts import Context, ContextTable, Line
from serve_app.metrics import RequestTrace
from serve_app.model.plan import own_voice
from serve_app.model.types import SynthesisRequest
from serve_app.timing.aligner import Aligner

TIMESTAMPS_HOLD_S = 0.02  # a segment's last audio, held until its timestamps are sent
BYTES_PER_SAMPLE = {AudioFormat.PCM: 2, AudioFormat.ULAW: 1, AudioFormat.ALAW: 1}


@dataclass(frozen=True)
class Settings:
    """What ``init`` fixed for the whole socket (``RequestBuilder.from_init``)."""

    request: SynthesisRequest  # every sentence's, but for its text, its ids and its prompt
    output: Output
    timestamps: Mode | None = None  # a `timestamps` message per segment: its words, or the segment itself
    say: Callable[[str], str] = str  # a sentence as the model says it: the socket's lexicons applied


async def send_event(ws: WebSocket, **event: Any) -> None:
    """A JSON event of the contract, as one text frame."""
    await ws.send_text(json.dumps(event, ensure_ascii=False))


async def send_error(ws: WebSocket, error: ServiceError, fatal: bool, context_id: str | None = None) -> None:
    """The contract's ``error`` event; nothing if the socket is gone already."""
    event: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message, "fatal": fatal}
    if error.field:
        event["field"] = error.field
    if context_id is not None:
        event["context_id"] = context_id
    if error.retry_after_s is not None:
        event["retry_after_s"] = error.retry_after_s
    with contextlib.suppress(WebSocketDisconnect, ConnectionError, RuntimeError):
        await send_event(ws, **event)


class Speaker:
    """Lines spoken one at a time, in order (``None`` ends a context: ``done``); the sentence being spoken can
    be stopped without stopping the speaker."""

    def __init__(
        self,
        ws: WebSocket,
        models: ModelClient,
        settings: Settings,
        contexts: ContextTable,
        aligner: Aligner | None,
        max_audio_ahead_s: float,
        idle: Callable[[], None],
    ) -> None:
        self.ws = ws
        self.models = models
        self.settings = settings
        self.contexts = contexts
        self.aligner = aligner
        self.max_audio_ahead_s = max_audio_ahead_s
        self._idle = idle  # called when nothing is left to say: the conversation's timers wait while it speaks
        self.queue: asyncio.Queue[Line] = asyncio.Queue()
        self.speaking: Context | None = None
        self.sentence: asyncio.Task | None = None
        self.idle_since = 0.0  # monotonic time its last sentence ended (0: none yet)

    @property
    def busy(self) -> bool:
        return self.speaking is not None or not self.queue.empty()

    def say(self, lines: list[Line]) -> None:
        for line in lines:
            self.queue.put_nowait(line)

    async def stop(self, contexts: list[Context]) -> None:
        """Stop the sentence being spoken if it is of one of ``contexts`` (cancelled already), and wait until it
        has stopped: no frame of theirs can follow."""
        sentence = self.sentence
        if self.speaking in contexts and sentence is not None:
            sentence.cancel()
            await asyncio.wait({sentence})

    async def run(self) -> None:
        while True:
            if self.queue.empty():
                self._idle()
            context, sentence = await self.queue.get()
            if context.cancelled:
                continue
            if sentence is None:
                self.contexts.forget(context)
                await send_event(self.ws, type="done", context_id=context.id, total_samples=context.samples)
                continue
            self.contexts.taken(context, sentence)
            self.speaking, self.sentence = context, asyncio.create_task(self._speak(context, sentence))
            try:
                await asyncio.wait({self.sentence})  # a cancel stops the sentence, not the speaker
                if not self.sentence.cancelled() and (exc := self.sentence.exception()) is not None:
                    raise exc
            finally:
                if self.sentence.done():
                    self.speaking, self.sentence, self.idle_since = None, None, time.monotonic()
                else:  # the speaker itself was cancelled: the socket is closing
                    self.sentence.cancel()
            await self._paced(context)

    async def _speak(self, context: Context, sentence: str) -> None:
        """One sentence: ``segment``, its audio, ``segment_end``; a refusal ends the context with an ``error``."""
        settled, index = self.settings.output, context.segments
        trace = RequestTrace(
            request_id=f"{settled.trace.request_id}-{context.id}-{index}",
            route=settled.trace.route,
            model=settled.model.name,
            tenant=settled.trace.tenant,
            characters=len(sentence),
        )
        output = replace(settled, trace=trace)
        said = self.settings.say(sentence)  # what the model says (the socket's lexicons); events name the written
        request = replace(self.settings.request, text=said, prompt=context.anchor, **trace.ids)
        try:
            chunks = await self.models.chunks(request, output)
        except ServiceError as exc:
            metrics.ingress().failed(trace, exc.code)
            self.contexts.drop(context)
            await send_error(self.ws, exc, fatal=False, context_id=context.id)
            return
        context.segments += 1
        start = context.samples
        await send_event(self.ws, type="segment", context_id=context.id, index=index, text=sentence, start_sample=start)
        try:
            audio = await self._send_audio(context, output, chunks)
        except (WebSocketDisconnect, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - whatever broke the model's stream (the service logged it), not the client
            self.contexts.drop(context)
            await send_error(self.ws, StreamFailed(f"the generation of {trace.request_id} failed"), False, context.id)
            return
        if self.settings.timestamps is not None:  # before the sentence's last frame, which was held for it
            await self._send_timestamps(context, index, sentence, audio, output, start)
            await self._send_frame(context, b"", hold=0)
        await send_event(self.ws, type="segment_end", context_id=context.id, index=index, end_sample=context.samples)
        if context.anchor is None and self.settings.request.voice is None and len(audio):
            context.anchor = own_voice(audio, output.model, said, self.settings.request.instructions)

    async def _send_audio(self, context: Context, output: Output, chunks: Any) -> np.ndarray:
        """The sentence's audio as binary frames in the socket's encoding (with timestamps asked for, all but its
        last ``TIMESTAMPS_HOLD_S``, which wait for them); the model's samples, kept for the anchor and the
        aligner."""
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
            context.samples += len(data) // BYTES_PER_SAMPLE[self.settings.output.format]

    async def _send_timestamps(
        self, context: Context, index: int, sentence: str, audio: np.ndarray, output: Output, start: int
    ) -> None:
        """The segment's ``timestamps``, in seconds from the context's first sample: its exact bounds the samples
        sent for it (and the tail still held), its words heard or estimated (``timestamps.py``)."""
        assert self.settings.timestamps is not None
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
        await send_event(
            self.ws, type="timestamps", context_id=context.id, index=index, source=timed.source, words=words
        )

    async def _paced(self, context: Context) -> None:
        """Wait while the context's audio is more than ``max_audio_ahead_s`` ahead of real time."""
        if context.started is None:
            return
        played = time.monotonic() - context.started
        ahead = context.samples / self.settings.output.sample_rate - played
        if ahead > self.max_audio_ahead_s:
            await asyncio.sleep(ahead - self.max_audio_ahead_s)
