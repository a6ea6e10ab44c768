"""The contract's error shape, ``{"error": {"code", "message", "field"}}``, for every failure.

FastAPI's own validation and HTTP errors, our ServiceErrors (raised here or inside a model
replica and re-raised through the handle) and Ray's back-pressure all end up here, so a client
never sees a stack trace or FastAPI's default shapes. Under ``/v1`` the same error also carries
OpenAI's fields (``type``, ``param``), which OpenAI's SDKs and the tools built on them read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
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


OPENAI_PREFIX = "/v1"
MAX_MESSAGE_CHARS = 500  # longer messages quote the client: cut, so an error never echoes a whole input
MAX_FIELD_CHARS = 100  # a field's name may come from the client too (a form part's)
# OpenAI's error ``type`` by status (its SDKs map statuses to exception classes; ``type`` is what they show).
_OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def route_path(scope: Scope) -> str:
    """The path within the app: Serve mounts an app under its route prefix (the ASGI root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def error_response(
    scope: Scope, status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    if len(message) > MAX_MESSAGE_CHARS:  # what a client sent is echoed in a short excerpt at most
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    if field is not None and len(field) > MAX_FIELD_CHARS:
        field = field[: MAX_FIELD_CHARS - 1] + "…"
    error: dict = {"code": code, "message": message, "field": field}
    path = route_path(scope)
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        error = {"message": message, "type": kind, "param": field, "code": code, "field": field}
    return JSONResponse({"error": error}, status, headers=headers or None)


def service_error_response(scope: Scope, exc: ServiceError) -> JSONResponse:
    return error_response(scope, exc.status, exc.code, exc.message, exc.field, **exc.headers())


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_field, not_found, overloaded.")
    message: str = Field(description="What went wrong, for people.")
    field: str | None = Field(description="The request field to blame, if one is.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenAIErrorDetail(ErrorDetail):
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="OpenAI's name for `field`: the request field to blame, if one is.")


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


_WHY = {
    400: "a field the model cannot honour, a value out of the supported range (`speed`), or a body that is "
    "not valid JSON; `error.field` names the field",
    401: "the request has no valid API key (or, on a deployment without keys, does not come from loopback)",
    403: "the caller may not do this (a shared voice is changed by admins only), or a tenant quota is reached "
    "(`error.code` quota_exceeded, `error.field` names the quota)",
    404: "the model or voice named does not exist, or belongs to another tenant; `error.field` names which",
    409: "a voice of this name exists already in the caller's tenant; `error.field` is `name`",
    413: "the text or an upload is over the configured limit",
    415: "an upload is not decodable audio",
    422: "a field is missing, of the wrong type or out of range; `error.field` names it",
    429: "the client's configured rate, its key's cap on concurrent requests or sockets, or the allowance of "
    "failed authentications per address is exceeded; retry after `Retry-After` seconds",
    503: "the service is at capacity or starting; retry after `Retry-After` seconds",
    507: "the voice store is full; nothing was saved",
}


def documented_errors(*statuses: int, openai: bool = False) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the errors a route sends, with the body they carry (this replaces
    FastAPI's default 422 ``detail`` list, which this service never sends)."""
    model = OpenAIErrorBody if openai else ErrorBody
    return {status: {"model": model, "description": _WHY[status]} for status in statuses}


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
    location = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":  # pydantic puts the character offset where a field name goes
        reason = first.get("ctx", {}).get("error", "malformed")
        position = location[1] if len(location) > 1 else "?"
        count_error(request.scope, "invalid_json")
        return error_response(
            request.scope, 400, "invalid_json", f"the body is not valid JSON: {reason} at position {position}", "body"
        )
    field = _field_of(location)
    count_error(request.scope, "invalid_field")
    return error_response(request.scope, 422, "invalid_field", validation_message(first, field), field)


def validation_message(error: Mapping[str, Any], field: str | None) -> str:
    """One of pydantic's errors as the contract words it: ``<field>: <why>``, "unknown field" for an extra one."""
    why = str(error.get("msg", "invalid request")).removeprefix("Value error, ")
    why = "unknown field" if error.get("type") == "extra_forbidden" else why
    return f"{field}: {why}" if field else why


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    count_error(request.scope, code)
    headers = exc.headers or {}
    message = str(exc.detail)
    if exc.status_code == 405 and "Allow" in headers:  # Starlette says which methods the path takes
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return error_response(request.scope, exc.status_code, code, message, getattr(exc, "field", None), **headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    count_error(request.scope, exc.code)
    return service_error_response(request.scope, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request %s failed", request.headers.get("x-request-id", "-"))
    count_error(request.scope, "internal_error")
    return error_response(
        request.scope, 500, "internal_error", "internal error; see the service log for this request id"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
