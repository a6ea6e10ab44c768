"""``WebSocket /api/tts/ws``: text in as a language model writes it, speech out sentence by sentence.

One socket is one conversation, and this module its transport: the socket accepted, its messages received
within the limits (rate, size, timers), and closed with the contract's codes. Its text goes into the socket's
contexts (``ws_contexts.py``), whose sentences the speaker says in order (``ws_speaker.py``); ``init`` is built
into the request of every sentence as the HTTP routes' are (``RequestBuilder.from_init``). The edge middleware
has checked the key, rate and capacity before this runs.

Two tasks per socket: a reader that only receives (a cancelled ``receive`` through Serve's proxy
could lose a message, so it is never cancelled mid-wait), and the speaker. The conversation loop
reacts to messages and timers; a ``cancel`` stops the speaker's current sentence and waits for it
to stop before ``cancelled`` is sent, so no frame of that context can follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve_app import metrics
from serve_app.config import AppConfig, WebSocketConfig
from serve_app.errors import BadRequest, PayloadTooLarge, RateLimited, ServiceError, SessionTimeout
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder
from serve_app.ingress.edge import KEY_SUBPROTOCOL
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.ws_contexts import ContextTable
from serve_app.ingress.ws_messages import Cancel, Close, End, Flush, Init, Text, parse
from serve_app.ingress.ws_speaker import Settings, Speaker, send_error, send_event
from serve_app.metrics import RequestTrace
from serve_app.timing.aligner import Aligner

ROUTE = "/api/tts/ws"
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
    """One socket, from ``accept`` to its close code."""

    contexts: ContextTable  # from `init` on, as the speaker
    speaker: Speaker

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
        self.settings: Settings | None = None
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.started = time.monotonic()
        self.last_message = self.started
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
            await send_error(self.ws, fatal.error, fatal=True)
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
        self.tasks.append(asyncio.create_task(self.speaker.run()))
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
            who = caller(self.ws)
            trace = self._trace()
            trace.tenant = who.tenant  # every sentence's trace takes it (ws_speaker.py), for usage
            request, output, say = await self.requests.from_init(init, trace, who)
        except ServiceError as exc:
            raise Fatal(CLOSE_BAD_MESSAGE if exc.status < 500 else CLOSE_TRY_LATER, exc) from None
        self.settings = Settings(request, output, init.timestamps, say)  # one_sentence: from_init says why
        limits = self.limits
        self.contexts = ContextTable(limits.max_contexts, limits.max_buffered_chars, init.max_wait_ms / 1000)
        self.speaker = Speaker(
            self.ws, self.models, self.settings, self.contexts, self.aligner, limits.max_audio_ahead_s, self._wake
        )
        await send_event(
            self.ws,
            type="ready",
            sample_rate=output.sample_rate,
            encoding=init.encoding,
            model=output.model.name,
            limits={**limits.model_dump(exclude={"max_connections"}), "max_wait_ms": init.max_wait_ms},
        )

    async def _on_message(self, message: Text | Flush | End | Cancel) -> None:
        if isinstance(message, Cancel):
            await self._cancel(message.context_id)
            return
        if isinstance(message, Text):
            try:
                lines = self.contexts.text(message.context_id, message.text)
            except (PayloadTooLarge, RateLimited) as error:  # this text is refused; the conversation goes on
                await send_error(self.ws, error, fatal=False, context_id=message.context_id)
                return
        elif isinstance(message, Flush):
            lines = self.contexts.flush(message.context_id)
        else:
            lines = self.contexts.end(message.context_id)  # its `done` follows its sentences, in turn
        self.speaker.say(lines)

    async def _cancel(self, context_id: str) -> None:
        """Barge-in: drop the contexts' text, stop their sentence, and only then say ``cancelled``."""
        cancelled = self.contexts.cancel(context_id)
        await self.speaker.stop(cancelled)
        sent = max((context.samples for context in cancelled), default=0)
        await send_event(self.ws, type="cancelled", context_id=context_id, sent_samples=sent)

    def _wake(self) -> None:
        """The speaker has nothing left to say: the timers, which wait while it speaks, are due a look."""
        self.inbox.put_nowait({"type": IDLE})

    # --- timers ----------------------------------------------------------------------------------

    def _until_next_timer(self) -> float:
        now = time.monotonic()
        deadlines = [self.started + self.limits.max_session_s]
        if not self.speaker.busy:
            deadlines.append(max(self.last_message, self.speaker.idle_since) + self.limits.idle_timeout_s)
            deadlines += self.contexts.deadlines()
        return min(deadlines) - now

    def _on_timers(self) -> None:
        now = time.monotonic()
        if now >= self.started + self.limits.max_session_s:
            raise Fatal(CLOSE_TIMEOUT, SessionTimeout(f"a conversation lasts at most {self.limits.max_session_s} s"))
        if self.speaker.busy:
            return  # words waiting while audio plays cost nothing: let them become a whole sentence
        if now >= max(self.last_message, self.speaker.idle_since) + self.limits.idle_timeout_s:
            raise Fatal(CLOSE_TIMEOUT, SessionTimeout(f"no message for {self.limits.idle_timeout_s} s"))
        self.speaker.say(self.contexts.overdue())

    # --- closing ---------------------------------------------------------------------------------

    async def _close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, ConnectionError, RuntimeError):
                await self.ws.close(code, reason[:120])  # a close reason is at most 123 bytes

    def _trace(self) -> RequestTrace:
        model = self.settings.output.model.name if self.settings else "none"
        return RequestTrace(request_id=self.id, route=ROUTE, model=model)


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
