"""Errors answered to a client, raised anywhere (ingress or model replica): as 4xx/503 over HTTP, as
``error`` messages carrying the same codes over the WebSocket.

They cross the Ray boundary by pickling, so all state lives in ``args``.
"""

from __future__ import annotations

import logging


class ServiceError(Exception):
    """An error with an HTTP status, a stable code and, where one is to blame, the request field."""

    status: int = 400
    code: str = "bad_request"
    default_retry_after_s: int | None = None

    def __init__(self, message: str, field: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, field, self.default_retry_after_s if retry_after_s is None else retry_after_s)

    @property
    def message(self) -> str:
        return self.args[0]

    @property
    def field(self) -> str | None:
        return self.args[1]

    @property
    def retry_after_s(self) -> int | None:
        return self.args[2]

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """The caller is known but may not do this (a shared voice is changed by admins only)."""

    status = 403
    code = "forbidden"


class QuotaExceeded(ServiceError):
    """A tenant's quota (its ``field`` names which, as in the config) would be passed."""

    status = 403
    code = "quota_exceeded"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request clashes with what exists (a second voice of one name in one tenant)."""

    status = 409
    code = "conflict"


class InvalidField(ServiceError):
    status = 422
    code = "invalid_field"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServiceError):
    status = 415
    code = "unsupported_media"


class Overloaded(ServiceError):
    """Every replica and the router's queue are full: shed the request rather than let it wait unbounded."""

    status = 503
    code = "overloaded"
    default_retry_after_s = 1

    def __init__(
        self,
        message: str = "the service is at capacity; retry shortly",
        field: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, field, retry_after_s)


class Unavailable(ServiceError):
    """A part of the service the answer needs is starting or restarting."""

    status = 503
    code = "unavailable"
    default_retry_after_s = 1


class RateLimited(ServiceError):
    """The client sent more requests than its configured rate allows."""

    status = 429
    code = "rate_limited"
    default_retry_after_s = 1


class InsufficientStorage(ServiceError):
    """The disk (or its quota) is full: nothing of the request was kept."""

    status = 507
    code = "insufficient_storage"


class SessionTimeout(ServiceError):
    """A WebSocket conversation ran past its length or idle limit."""

    status = 408
    code = "timeout"


class StreamFailed(ServiceError):
    """A generation failed mid-stream (logged with its request id); over the WebSocket the conversation
    goes on, and the client hears which context failed."""

    status = 500
    code = "stream_failed"


class _ClientErrorsAreNotFailures(logging.Filter):
    """Serve's replica logs every exception a replica method raises as "Request failed." with its traceback.
    A client error raised in a model replica (text it cannot speak, a missing transcript) is answered as a
    4xx, counted and logged by the ingress: its traceback would be a screenful of console per typo."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, ServiceError) and record.getMessage() == "Request failed.")


# Installed wherever these errors can be raised (the logger's filters survive Serve's handler set-up).
logging.getLogger("ray.serve").addFilter(_ClientErrorsAreNotFailures())
