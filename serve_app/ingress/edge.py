"""What every request meets before routing: CORS, Serve's client-controllable headers, who is calling
(the API key and its tenant; without keys, this machine's own clients only unless anonymous access is asked
for: ``addresses.py``), the rate limits, per-key caps, the body size cap, a tenant at its quota on an upload
route, the parts a form route takes (``forms.py``), and a service at capacity: each refused before any of the
body is read or any form is parsed. The caller found here is put in the request's state for the routes
(``dependencies.caller``). WebSocket upgrades meet the same checks (and a cap on open sockets) before the
socket is accepted, and are refused with the same JSON errors and status codes (ASGI's WebSocket denial
response).

Pure ASGI, so the body cap applies while the body streams in: an upload whose Content-Length is
over the cap is refused before any of it is read, and one without a length is cut off as soon as
it passes the cap; neither reaches the multipart parser. The chain is configured from the
replica's :class:`AppConfig` at the first request (the FastAPI app itself is built at import).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from ray import serve
from ray.exceptions import TaskCancelledError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import metrics
from serve_app.config import ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, FORM_OVERHEAD_BYTES, AccessConfig, AppConfig
from serve_app.errors import BadRequest, Overloaded, PayloadTooLarge, RateLimited, ServiceError, Unauthorized
from serve_app.ingress.addresses import Addresses, is_local
from serve_app.ingress.auth import Keyring, anonymous
from serve_app.ingress.error_responses import count_error, route_path, service_error_response
from serve_app.ingress.forms import FORM_PARTS, FormParts, parts_by_path
from serve_app.store.tenants import Principal

# Readable without a key: probes, the docs and the playground page (its API calls still need one).
PUBLIC_PATHS = frozenset({"/", "/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/playground/",)
# Routes that need a model slot: refused here, before their forms are parsed, while every model is full.
SYNTHESIS_PATHS = frozenset(
    {"/api/tts/stream", "/api/tts", "/api/tts/with-timestamps", "/v1/audio/speech", "/api/tts/ws"}
)
# The routes whose bodies may pass the reference-audio cap: an adapter upload (max_adapter_bytes), a job
# (jobs.max_body_bytes).
ADAPTER_UPLOADS, JOBS = "/api/adapters", "/api/jobs"
# Upload routes' quota checks, run before their bodies are read: (caller, the body's length or 0) -> raise or not.
RoomCheck = Callable[[Principal, int], None]
# Browsers cannot set headers on a WebSocket: they offer the key as this subprotocol's suffix.
KEY_SUBPROTOCOL = "bearer."

# Ray Serve's proxy lets a client lift the end-to-end timeout (<= 0 disables it) and disconnect
# cancellation with these; they cannot be stripped behind the proxy, so requests carrying them are refused.
SERVE_CONTROL_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")

NO_KEYS = (
    "this service has no API keys configured, so it serves only clients on its own machine: set "
    f"{API_KEYS_ENV} (or access.api_keys) and send Authorization: Bearer <key>, or allow anonymous access "
    f"explicitly with access.allow_anonymous: true ({ALLOW_ANONYMOUS_ENV}=true)"
)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` so FastAPI's body parsing passes it through (it wraps other errors in a 400)."""

    field = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._chain: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._chain is None:
            ingress = serve.get_replica_context().servable_object
            stores = ingress.requests
            rooms: dict[str, RoomCheck] = {
                "/api/voices": lambda caller, length: stores.voices.check_room(caller),
                ADAPTER_UPLOADS: lambda caller, length: stores.adapters.check_room(
                    caller, max(1, length - FORM_OVERHEAD_BYTES)
                ),
            }
            forms = parts_by_path(scope["app"].openapi(), ingress.config.limits.max_form_field_bytes)
            self._chain = build_chain(
                self.app, ingress.config, ingress.keyring, ingress.models.every_model_full, rooms, forms
            )
        await self._chain(scope, receive, send)


def build_chain(
    app: ASGIApp,
    config: AppConfig,
    keyring: Keyring,
    full: Callable[[], bool],
    rooms: Mapping[str, RoomCheck] | None = None,
    forms: Mapping[str, FormParts] | None = None,
) -> ASGIApp:
    larger = {ADAPTER_UPLOADS: config.limits.max_adapter_bytes + FORM_OVERHEAD_BYTES, JOBS: config.jobs.max_body_bytes}
    guard = Guard(app, config.access, keyring, config.limits.max_request_bytes, full, larger, rooms, forms)
    guarded = SocketGuard(guard, config.websocket.max_connections)
    if not config.access.cors_allow_origins:
        return guarded
    return CORSMiddleware(
        guarded,
        allow_origins=config.access.cors_allow_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
        expose_headers=["X-Request-Id", "X-Sample-Rate", "X-Model", "X-Ignored-Fields", "Retry-After"],
    )


class Guard:
    """Refuses, with the contract's JSON errors, what must not reach a route; names the caller of what may."""

    def __init__(
        self,
        app: ASGIApp,
        access: AccessConfig,
        keyring: Keyring,
        max_body_bytes: int,
        full: Callable[[], bool],
        larger_bodies: Mapping[str, int] | None = None,
        rooms: Mapping[str, RoomCheck] | None = None,
        forms: Mapping[str, FormParts] | None = None,
    ) -> None:
        self.app = app
        self._full = full
        self._keyring = keyring
        self._addresses = Addresses(access.trusted_proxies)
        self._max_body = max_body_bytes
        self._larger_bodies = larger_bodies or {}  # POST path -> its own body cap
        self._rooms = rooms or {}  # POST path -> its quota check
        self._forms = forms or {}  # POST path -> the parts its form takes
        self._rate = limits.parse_many(access.rate_limit) if access.rate_limit else []
        self._failed_rate = limits.parse_many(access.failed_auth_rate_limit) if access.failed_auth_rate_limit else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._caps = {"http": access.max_requests_per_key, "websocket": access.max_sockets_per_key}
        self._holding: Counter[tuple[str, str]] = Counter()  # (scope type, key id) -> requests in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        posted = scope["type"] == "http" and scope.get("method") == "POST"
        body_limit = self._larger_bodies.get(path, self._max_body) if posted else self._max_body
        try:
            caller = self._check(scope, path, body_limit)
            slot = self._slot(scope, caller)
            if posted and caller is not None and (room := self._rooms.get(path)) is not None:
                length = Headers(scope=scope).get("content-length", "0")
                await asyncio.to_thread(room, caller, int(length))
        except ServiceError as exc:
            await refuse(exc, scope, receive, send)
            return
        if posted:
            FORM_PARTS.set(self._forms.get(path))
        scope.setdefault("state", {})["caller"] = caller
        receive = self._capped(receive, body_limit) if scope["type"] == "http" else receive
        if slot is None:
            await self.app(scope, receive, send)
            return
        self._holding[slot] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._holding[slot] -= 1
            if not self._holding[slot]:
                del self._holding[slot]

    def _check(self, scope: Scope, path: str, body_limit: int) -> Principal | None:
        headers = Headers(scope=scope)
        for name in SERVE_CONTROL_HEADERS:
            if name in headers:
                raise BadRequest(f"the {name} header is not accepted here", name)
        caller = None
        if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            caller = self._authenticate(headers, scope)
            self._count(self._rate, caller.key_id)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadRequest("Content-Length is not a number", "content-length")
            if int(length) > body_limit:
                raise PayloadTooLarge(f"the request body is larger than {body_limit} bytes", "body")
        if opens_synthesis(scope) and self._full():
            raise Overloaded()
        return caller

    def _authenticate(self, headers: Headers, scope: Scope) -> Principal:
        """The caller its key stands for; without keys configured, the one (admin) tenant, for loopback
        clients unless anonymous access was asked for. Wrong keys are counted per client address, and past
        ``failed_auth_rate_limit`` answered 429 (a valid key is never slowed by someone else's guessing)."""
        address = self._addresses.client(scope, headers)
        if not self._keyring:
            if not self._keyring.allow_anonymous and not is_local(scope, headers):
                raise Unauthorized(NO_KEYS, "authorization")
            return anonymous(address)
        token = presented_key(headers, scope)
        caller = self._keyring.principal(token) if token is not None else None
        if caller is None:
            self._count(self._failed_rate, f"failed:{address}")
            how = " (or the subprotocol bearer.<key>)" if scope["type"] == "websocket" else ""
            raise Unauthorized(f"a valid API key is required: Authorization: Bearer <key>{how}", "authorization")
        return caller

    def _slot(self, scope: Scope, caller: Principal | None) -> tuple[str, str] | None:
        """The per-key cap a request (any route) or a socket counts against, refused (429) when it is full."""
        cap = self._caps.get(scope["type"])
        if cap is None or caller is None:
            return None
        slot = (scope["type"], caller.key_id)
        if self._holding[slot] >= cap:
            what = "WebSocket conversations open" if scope["type"] == "websocket" else "requests in progress"
            raise RateLimited(f"this key has {cap} {what} on this replica, its limit; retry when one ends")
        return slot

    def _count(self, items: list[limits.RateLimitItem], client: str) -> None:
        for item in items:
            if not self._limiter.hit(item, client):
                reset = self._limiter.get_window_stats(item, client).reset_time
                raise RateLimited(f"rate limit {item} exceeded", retry_after_s=max(1, math.ceil(reset - time.time())))

    def _capped(self, receive: Receive, limit: int) -> Receive:
        """``receive`` that refuses bodies past the cap and reports a client gone as a disconnect."""
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            try:
                message = await receive()
            except TaskCancelledError:  # how Serve's proxy says the client went away: say it the ASGI way
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return capped_receive


class SocketGuard:
    """Refuses a WebSocket past ``max_open`` open on this replica (503, before it is accepted): each open
    socket holds one of the ingress replica's ``max_ongoing_requests`` for its whole life, and HTTP
    requests need some too."""

    def __init__(self, app: ASGIApp, max_open: int) -> None:
        self.app = app
        self._max_open = max_open
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.open >= self._max_open:
            refusal = Overloaded(f"{self.open} sockets are open on this replica; retry shortly")
            await refuse(refusal, scope, receive, send)
            return
        self._opened(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._opened(-1)

    def _opened(self, change: int) -> None:
        self.open += change
        metrics.ingress().open_websockets.set(self.open)


async def refuse(exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    """The contract's JSON error; for a WebSocket, as its denial response (the server supports it), else a
    plain refusal of the upgrade (HTTP 403)."""
    count_error(scope, exc.code)
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await service_error_response(scope, exc)(scope, receive, send)


def opens_synthesis(scope: Scope) -> bool:
    """Whether the request takes a model slot (a synthesis POST or a WebSocket conversation)."""
    opens = scope["type"] == "websocket" or scope.get("method") == "POST"
    return opens and route_path(scope) in SYNTHESIS_PATHS


def presented_key(headers: Headers, scope: Scope) -> str | None:
    """The bearer token of the Authorization header; on a WebSocket, else the ``bearer.KEY`` subprotocol."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scope["type"] == "websocket" and not token:
        offered = [name.strip() for name in headers.get("sec-websocket-protocol", "").split(",")]
        keys = [name.removeprefix(KEY_SUBPROTOCOL) for name in offered if name.startswith(KEY_SUBPROTOCOL)]
        scheme, token = ("bearer", keys[0]) if keys else (scheme, token)
    return token.strip() if scheme.lower() == "bearer" else None
