"""Whether an engine can still serve: what the model replica's ``check_health`` asks (``deployment.py``).

A dead or stuck engine thread (a CUDA error, a kernel that never returns) would otherwise leave requests
waiting behind a green probe, and Serve would never replace the replica. The engine's thread tells its
``Liveness`` when it is busy and when it waits for work; the check fails when that thread is gone, when it
has been busy past ``max_step_s`` without getting back to its work queue (a step in flight that long is
stuck), or when it recorded a device error (fatal: the CUDA context is lost; a request's own bad input is
not). Once it fails, it fails for good: every request the engine holds (generating or waiting) ends with a
503 ``Unavailable``, new ones are refused the same way, and Serve replaces the replica after three failed
checks in a row (``health_check_period_s`` apart).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from serve_app.errors import Unavailable

T = TypeVar("T")
Fail = Callable[[BaseException], Any]  # ends one request's consumer with the error (from any thread)


class Unhealthy(RuntimeError):
    """What the replica's health check raises: Serve logs it and replaces the replica."""


def is_device_error(error: BaseException) -> bool:
    """An error that leaves the device unusable (CUDA reports them as sticky): not an out-of-memory, which a
    smaller batch survives, nor anything about one request's input."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator = getattr(torch, "AcceleratorError", None)
    return (accelerator is not None and isinstance(error, accelerator)) or (
        isinstance(error, RuntimeError) and "CUDA error" in str(error)
    )


class Liveness:
    """One engine thread's signs of life (made on that thread) and the requests to end if it stops giving them."""

    def __init__(self, max_step_s: float) -> None:
        self.max_step_s = max_step_s
        self.thread = threading.current_thread()
        self._busy_since: float | None = None  # monotonic; None while the thread waits for work
        self._fatal: BaseException | None = None
        self._problem: str | None = None  # once set, for good
        self._watchers: dict[int, Fail] = {}
        self._next_watcher = 0
        self.inbox: queue.SimpleQueue[Any] = _Inbox(self)

    def busy(self) -> None:
        """The thread took up work (or came back to its queue between steps: progress)."""
        self._busy_since = time.monotonic()

    def idle(self) -> None:
        self._busy_since = None

    def failure(self, error: BaseException) -> BaseException:
        """The error to hand a request that ``error`` failed: a device error is recorded (the replica is done
        for) and becomes a 503 the client may retry elsewhere; any other error is the request's own."""
        if not is_device_error(error):
            return error
        self._fatal = self._fatal or error
        return self._unavailable(f"a device error: {error}")

    def timed(self, items: Iterator[T]) -> Iterator[T]:
        """``items``, the thread busy while each is produced (the reference engine's steps)."""
        try:
            while True:
                self.busy()
                try:
                    item = next(items)
                except StopIteration:
                    return
                except Exception as exc:
                    if (failed := self.failure(exc)) is exc:
                        raise
                    raise failed from exc
                finally:
                    self.idle()
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    @contextlib.contextmanager
    def serving(self, fail: Fail) -> Iterator[None]:
        """While a request is held: ``fail`` ends it once the engine is found unhealthy. Refused (503) at once
        when it already is."""
        if self._problem is not None:
            raise self._unavailable(self._problem)
        key, self._next_watcher = self._next_watcher, self._next_watcher + 1
        self._watchers[key] = fail
        try:
            yield
        finally:
            self._watchers.pop(key, None)

    def problem(self) -> str | None:
        """Why the engine cannot serve, or None while it can."""
        if self._problem is not None:
            return self._problem
        if not self.thread.is_alive():
            return f"its thread {self.thread.name} has died"
        if self._fatal is not None:
            return f"a device error: {self._fatal}"
        busy_since = self._busy_since
        if busy_since is not None and (busy := time.monotonic() - busy_since) > self.max_step_s:
            return f"a step has run for {busy:.0f} s (max_step_s: {self.max_step_s:g})"
        return None

    def check(self) -> None:
        """Raises ``Unhealthy`` when the engine cannot serve, after ending every request it holds with a 503
        (they would otherwise wait for a thread that will never answer). Cheap: the replica's event loop
        runs it every ``health_check_period_s``."""
        if (problem := self.problem()) is None:
            return
        self._problem = problem
        watchers, self._watchers = list(self._watchers.values()), {}
        for fail in watchers:
            fail(self._unavailable(problem))
        raise Unhealthy(f"the engine cannot serve: {problem}")

    def join(self, timeout_s: float) -> None:
        """Wait for the thread to end (closing), unless it is stuck: then it never will."""
        if self._problem is None:
            self.thread.join(timeout=timeout_s)

    @staticmethod
    def _unavailable(problem: str) -> Unavailable:
        return Unavailable(f"the model replica failed ({problem}) and is being replaced; retry shortly")


class _Inbox(queue.SimpleQueue):
    """A work queue whose every read is a sign of life: the thread is idle while it blocks on it, and busy from
    each read on, so a step is the time between two reads."""

    def __init__(self, liveness: Liveness) -> None:
        self._liveness = liveness

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            self._liveness.idle()
        try:
            return super().get(block, timeout)
        finally:
            self._liveness.busy()
