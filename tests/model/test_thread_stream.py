"""iterate_in_thread: items cross in order, errors surface, cancellation stops the producer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.model.thread_stream import iterate_in_thread


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_items_in_order_then_done(executor: ThreadPoolExecutor) -> None:
    async def consume() -> list[int]:
        return [i async for i in iterate_in_thread(lambda: iter(range(100)), executor, 4)]

    assert asyncio.run(consume()) == list(range(100))
    assert _producer_finished(executor)


def test_producer_errors_reach_the_consumer(executor: ThreadPoolExecutor) -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    async def consume() -> list[int]:
        return [i async for i in iterate_in_thread(failing, executor, 4)]

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(consume())


def test_closing_early_stops_the_producer_within_one_item(executor: ThreadPoolExecutor) -> None:
    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    async def consume() -> None:
        stream = iterate_in_thread(endless, executor, 2)
        async for i in stream:
            if i == 3:
                break
        await stream.aclose()

    asyncio.run(consume())
    assert _producer_finished(executor) and closed.is_set()
    # the consumer took 4 items; the buffer holds at most 2 more, plus the one being handed over
    assert len(produced) <= 4 + 2 + 1


def test_cancellation_while_blocked_on_a_full_buffer(executor: ThreadPoolExecutor) -> None:
    async def consume() -> None:
        stream = iterate_in_thread(lambda: iter(range(10**9)), executor, 1)

        async def first_then_wait() -> None:
            async for _ in stream:
                await asyncio.sleep(3600)

        task = asyncio.create_task(first_then_wait())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()

    asyncio.run(consume())
    assert _producer_finished(executor)


def _producer_finished(executor: ThreadPoolExecutor) -> bool:
    """The executor's one worker is free again: the producer let go (the replica's generation thread)."""
    return executor.submit(lambda: True).result(timeout=5)
