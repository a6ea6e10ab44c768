"""FastAPI dependencies: what a route needs from the running ingress replica."""

from __future__ import annotations

import uuid

from fastapi import Request
from ray import serve
from starlette.requests import HTTPConnection

from serve_app.config import AppConfig
from serve_app.errors import Unauthorized
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.replica_reports import ReplicaReports
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.metrics import RequestTrace
from serve_app.store.tenants import Principal
from serve_app.timing.aligner import Aligner


def model_client() -> ModelClient:
    """The model deployments' client held by this replica's TTSIngress instance (Serve pickles the FastAPI
    app by value, so state set on a module-level app object would not be the one serving requests)."""
    return serve.get_replica_context().servable_object.models


def request_builder() -> RequestBuilder:
    """What turns this replica's requests into model requests (with the voice store it reads)."""
    return serve.get_replica_context().servable_object.requests


def aligner() -> Aligner | None:
    """This replica's forced aligner for word timestamps, if the config names one it could load."""
    return serve.get_replica_context().servable_object.aligner


def replica_reports() -> ReplicaReports:
    """The model replicas' latest reports, kept by this ingress replica."""
    return serve.get_replica_context().servable_object.reports


def app_config() -> AppConfig:
    """The configuration this replica's TTSIngress was deployed with."""
    return serve.get_replica_context().servable_object.config


def request_trace(request: Request) -> RequestTrace:
    """This request's id and route, kept on the request so its error handler can label metrics too.

    Serve's proxy puts the client's X-Request-Id (or one it generated) on every request, answers
    with it in X-Request-ID, and tags the replicas' log lines with it.
    """
    route = request.scope.get("route")
    who = request.scope.get("state", {}).get("caller")
    trace = RequestTrace(
        request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
        route=getattr(route, "path", request.url.path),
        tenant=who.tenant if who is not None else "",
    )
    request.state.trace = trace
    return trace


def caller(connection: HTTPConnection) -> Principal:
    """Who is calling, as the edge middleware authenticated them (HTTP requests and WebSockets alike)."""
    found = connection.scope.get("state", {}).get("caller")
    if found is None:  # a public path's route asked: none of them may act for a tenant
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>", "authorization")
    return found
