"""What a failed try of a job item means for it: the one rule the job runner follows when rendering raises.

Not the item's fault (the model was full, the store could not keep the audio): the item waits and is tried
again, uncounted. The model replica failed (it died, or answered 503 while Serve replaces it): a try, counted
against ``jobs.attempts``. The model refused the item (a 4xx: its text, its settings) or its voice or adapter
is gone: it fails for good, reported with that error. The job was deleted meanwhile: nothing to keep.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ray.serve.exceptions import BackPressureError

from serve_app.errors import ServiceError


class ItemFailed(Exception):
    """The item cannot be rendered as asked: reported in the job's status, not tried again."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code, self.message = code, message


class Then(enum.Enum):
    WAIT = "wait"  # back to the head of its job's queue, after a pause; no try counted
    RETRY = "retry"  # a try counted: again, up to jobs.attempts, then failed as model_failed
    FAIL = "fail"  # failed for good, with the verdict's code and message
    DROP = "drop"  # its job is gone: nothing kept


@dataclass(frozen=True)
class Verdict:
    then: Then
    code: str = ""
    message: str = ""


def verdict(error: Exception) -> Verdict:
    """What to do with an item whose try raised ``error``."""
    if isinstance(error, BackPressureError):  # Serve's router: the model is full; the item was not started
        return Verdict(Then.WAIT)
    if isinstance(error, ItemFailed):
        return Verdict(Then.FAIL, error.code, error.message)
    if isinstance(error, ServiceError):
        if error.status < 500:
            return Verdict(Then.FAIL, error.code, error.message)
        return Verdict(Then.RETRY)  # the replica is failing (503 while Serve replaces it)
    if isinstance(error, FileNotFoundError):  # the job's directory: deleted while the item was rendered
        return Verdict(Then.DROP)
    if isinstance(error, OSError):  # the store (a full disk): not the model's fault
        return Verdict(Then.WAIT)
    return Verdict(Then.RETRY)  # the model replica died or failed (Ray says how)
