"""The contract's error shape, ``{"error": {"code", "message", "field"}}``, for every failure.

FastAPI's own validation and HTTP errors, our ServiceErrors (raised here or inside a model
replica and re-raised through the handle) and Ray's back-pressure all end up here, so a client
never sees a stack trace or FastAPI's default shapes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

from serve_app import metrics
from serve_app.errors import ServiceError
from serve_app.metrics import RequestTrace

logger = logging.getLogger("ray.serve")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media",
}


def error_response(status: int, code: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status, headers=headers or None)


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.field, **exc.headers())


def count_error(scope: Scope, code: str) -> None:
    """Count an error answer by model (once known), route (the matched one: paths are unbounded) and code."""
    trace = scope.get("state", {}).get("trace")
    route = getattr(scope.get("route"), "path", "unmatched")
    metrics.ingress().failed(trace or RequestTrace(request_id="", route=route), code)


def _field_of(location: tuple) -> str | None:
    """('body', 'cfg_value') -> 'cfg_value'; locations of the whole body name no field."""
    names = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return names[0] if names else None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    count_error(request.scope, "invalid_field")
    return error_response(422, "invalid_field", f"{field}: {message}" if field else message, field)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    count_error(request.scope, code)
    headers = exc.headers or {}
    message = str(exc.detail)
    if exc.status_code == 405 and "Allow" in headers:  # Starlette says which methods the path takes
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return error_response(exc.status_code, code, message, getattr(exc, "field", None), **headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    count_error(request.scope, exc.code)
    return service_error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request %s failed", request.headers.get("x-request-id", "-"))
    count_error(request.scope, "internal_error")
    return error_response(500, "internal_error", "internal error; see the service log for this request id")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
