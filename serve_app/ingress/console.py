"""What the console says: who may call (when no key is configured), one line when the service is ready,
and one line per request.

Serve's own access log writes a line for every call a replica takes, so the model replicas' status
reports to the status board (every second) and the health probes scrolled the console: the configs
turn it off (``logging_config.enable_access_log: false``, the switch that brings it back) and this
module writes the lines a person reads instead. Both go through Serve's replica logger, so they also
land in the replica's log file with the request's id.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.config import API_KEYS_ENV
from serve_app.errors import Unavailable
from serve_app.ingress.auth import Keyring
from serve_app.ingress.edge import route_path
from serve_app.ingress.replica_reports import ReplicaReports
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo

logger = logging.getLogger("ray.serve")

READY_POLL_S = 1.0
# Probes ask every few seconds, forever: their lines would be the scrolling this module exists to stop.
PROBE_PATHS = frozenset({"/health", "/ready"})


class RequestLog:
    """One line per HTTP request as it ends: id, route, model, audio seconds, time to first audio, status.

    Pure ASGI, outermost, so it sees the status of every answer (the edge's refusals included) and the
    end of a stream, not only its start; the route's :class:`RequestTrace` supplies the rest.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with the routes, which leave their trace in it
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = route_path(scope)
            level = logging.DEBUG if path in PROBE_PATHS else logging.INFO
            if logger.isEnabledFor(level):
                logger.log(level, request_line(scope, path, state.get("trace"), status, started))


def request_line(scope: Scope, path: str, trace: RequestTrace | None, status: int, started: float) -> str:
    headers = dict(scope.get("headers") or [])
    request_id = trace.request_id if trace else headers.get(b"x-request-id", b"-").decode("latin-1")
    parts = [f"request {request_id}", f"{scope['method']} {trace.route if trace else path}", f"status {status}"]
    if trace is not None and trace.model != "none":
        parts.append(f"model {trace.model}")
    if trace is not None and trace.first_audio_s is not None:
        parts.append(f"audio {trace.audio_seconds:.2f} s, first audio after {1e3 * trace.first_audio_s:.0f} ms")
    parts.append(f"took {1e3 * (time.perf_counter() - started):.0f} ms")
    return ", ".join(parts)


def announce_access(keyring: Keyring) -> None:
    """Say once, loudly, who may call a deployment without API keys."""
    if keyring:
        return
    if keyring.allow_anonymous:
        logger.warning(
            "ANONYMOUS ACCESS: no API keys are configured and anonymous access is allowed: anyone who can reach "
            "this port may synthesize, and save and delete voices, as the one admin tenant"
        )
    else:
        logger.warning(
            "no API keys are configured: only clients on this machine (loopback) are served, others get 401. Set "
            "%s (comma-separated keys) or access.api_keys, or allow anonymous access explicitly "
            "(access.allow_anonymous: true)",
            API_KEYS_ENV,
        )


async def announce_when_ready(reports: ReplicaReports, model_names: list[str]) -> None:
    """Log one line once every model has a replica that loaded and warmed up (it reports to the board)."""
    while True:
        try:
            latest = await reports.latest(model_names)
        except Unavailable:  # the board is starting: ask again
            latest = []
        infos = {info.name: info for info, _ in latest}
        if all(name in infos for name in model_names):
            break
        await asyncio.sleep(READY_POLL_S)
    try:
        base = await asyncio.to_thread(public_url)
    except Exception:  # noqa: BLE001 - Serve's private client moved: the line still says the service is ready
        base = "http://<serve's http_options host:port>"
    models = "; ".join(describe(infos[name]) for name in model_names)
    logger.info("ready: playground %s/ , API docs %s/docs ; serving %s", base, base, models)


def describe(info: ModelInfo) -> str:
    weights = "SYNTHETIC weights (speaks noise)" if info.synthetic else "real weights"
    return f"{info.name} ({info.source}, {info.sample_rate} Hz, {info.device}, {weights})"


def public_url() -> str:
    """Where this app is served (Serve's HTTP options and the app's route prefix), as a browser would type it."""
    from ray.serve.context import _get_global_client  # no public API says where the proxy listens

    client = _get_global_client()
    options = client.http_config
    host = "localhost" if options.host in ("0.0.0.0", "127.0.0.1", "::") else options.host
    app = serve.get_replica_context().app_name
    prefix = client.get_serve_details().get("applications", {}).get(app, {}).get("route_prefix") or "/"
    return f"http://{host}:{options.port}{prefix.rstrip('/')}"
