"""What a caller of a model deployment's handle (the ingress, the job runner) sees of the errors raised in it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ray.exceptions import RayTaskError

from serve_app.errors import ServiceError


@contextlib.contextmanager
def model_errors() -> Iterator[None]:
    """Re-raise a client error raised inside a model replica as itself, not wrapped by Ray."""
    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, ServiceError):
            raise exc.cause from None
        raise
