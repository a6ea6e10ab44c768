"""FastAPI dependencies: what a route needs from the running ingress replica."""

from __future__ import annotations

from fastapi import Request
from ray import serve

from serve_app.ingress.synthesis import SynthesisService


def synthesis_service() -> SynthesisService:
    """The service held by this replica's TTSIngress instance (Serve pickles the FastAPI app by value,
    so state set on a module-level app object would not be the one serving requests)."""
    return serve.get_replica_context().servable_object.synthesis


def request_id(request: Request) -> str:
    """Serve's proxy puts the client's X-Request-Id (or a generated one) on every request."""
    return request.headers.get("x-request-id", "")
