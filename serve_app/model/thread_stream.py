"""Run a blocking generator on a thread we own and consume it from asyncio.

Ray Serve only cancels a request at an ``await``: a sync generator in its threadpool would go
on generating into the void after a disconnect. Here the generator runs on our executor, its
items cross to the event loop through a bounded buffer, and cancelling (or closing) the async
side sets a flag the thread checks between items, so generation stops within one item.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from serve_app.model.liveness import Liveness

T = TypeVar("T")

_POLL_S = 0.05  # how often a producer blocked on a full buffer re-checks for cancellation
_ITEM, _END, _ERROR = range(3)


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]],
    executor: Executor,
    max_buffered: int,
    liveness: Liveness | None = None,
) -> AsyncIterator[T]:
    """Yield what ``make_iterator()`` yields, producing it on ``executor``.

    At most ``max_buffered`` items wait for the consumer; beyond that the producer pauses.
    Closing or cancelling the consumer returns only after the producer stopped, or drops it
    unstarted if it was still waiting for the executor. With ``liveness`` (the executor's thread's), the
    consumer is refused or ended with its error once that thread is found dead or stuck, and then does not
    wait for a producer that will never stop.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    room = threading.Semaphore(max_buffered)
    stopped = threading.Event()

    def hand_over(kind: int, value: object) -> bool:
        while not room.acquire(timeout=_POLL_S):
            if stopped.is_set():
                return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (replica shutting down)
            return False
        return True

    def produce() -> None:
        if stopped.is_set():  # cancelled while waiting for the executor
            return
        iterator = make_iterator()
        try:
            for item in iterator:
                if stopped.is_set() or not hand_over(_ITEM, item):
                    return
            hand_over(_END, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            hand_over(_ERROR, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def fail(error: BaseException) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (_ERROR, error))

    with liveness.serving(fail) if liveness is not None else contextlib.nullcontext():
        producer = executor.submit(produce)
        try:
            while True:
                kind, value = await queue.get()
                room.release()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value  # type: ignore[misc]
                yield value  # type: ignore[misc]
        finally:
            stopped.set()
            stuck = liveness is not None and liveness.problem() is not None
            if not producer.cancel() and not stuck:  # it started: wait (at most one item) until the thread lets go
                await asyncio.shield(asyncio.wrap_future(producer))
