"""coalesced: a stream's chunks joined only while its listener is ahead; same audio, never late, closes its source.

A model-free source stands in for the engine here (the policy is plumbing); the HTTP tests stream real
voxcpm audio through it, with the defaults, and compare the bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import numpy as np
import pytest

from serve_app.model.coalescing import coalesced

RATE = 1000  # samples per second: a chunk of 100 samples is 0.1 s of audio


async def _chunks(
    count: int, samples: int = 100, every_s: float = 0.0, then_stall_s: float = 0.0
) -> AsyncGenerator[np.ndarray, None]:
    for index in range(count):
        if every_s:
            await asyncio.sleep(every_s)
        yield np.full(samples, index, dtype=np.float32)
    await asyncio.sleep(then_stall_s)
    yield np.full(samples, count, dtype=np.float32)


async def _received(pieces: AsyncGenerator[np.ndarray, None]) -> list[tuple[float, np.ndarray]]:
    started = time.monotonic()
    return [(time.monotonic() - started, piece) async for piece in pieces]


def test_without_a_lead_every_chunk_passes_as_it_comes() -> None:
    received = asyncio.run(_received(coalesced(_chunks(9), RATE, lead_s=0, max_s=1)))
    assert [int(piece[0]) for _, piece in received] == list(range(10))


def test_a_listener_ahead_gets_the_same_audio_in_fewer_pieces_up_to_the_most() -> None:
    received = asyncio.run(_received(coalesced(_chunks(39), RATE, lead_s=0.3, max_s=0.25)))
    pieces = [piece for _, piece in received]
    np.testing.assert_array_equal(np.concatenate(pieces), np.concatenate([np.full(100, i) for i in range(40)]))
    assert [len(piece) for piece in pieces[:3]] == [100, 100, 100]  # first chunks out at once: no lead yet
    assert len(pieces) < 40 / 2 + 3
    assert max(len(piece) for piece in pieces) == 200  # 0.25 s: two chunks of 0.1 s


def test_a_stream_no_faster_than_real_time_is_never_held() -> None:
    received = asyncio.run(_received(coalesced(_chunks(7, samples=10, every_s=0.02), RATE, lead_s=0.05, max_s=1)))
    assert [len(piece) for _, piece in received] == [10] * 8


def test_held_audio_leaves_before_the_listener_falls_below_half_the_lead_when_the_model_stalls() -> None:
    # 0.9 s of audio at once, then nothing for 2 s: the listener, playing from the first chunk, has it
    # all by 0.75 s (half the 0.3 s lead before its 0.9 s run out), not at 2 s with the next chunk
    received = asyncio.run(_received(coalesced(_chunks(9, then_stall_s=2.0), RATE, lead_s=0.3, max_s=0.25)))
    arrived = {int(value): at for at, piece in received for value in np.unique(piece)}
    assert 0.5 < arrived[8] < 0.9, arrived
    assert arrived[9] >= 2.0
    assert sum(len(piece) for _, piece in received) == 1000


def test_errors_of_the_source_reach_the_consumer() -> None:
    async def failing() -> AsyncGenerator[np.ndarray, None]:
        yield np.zeros(100, dtype=np.float32)
        raise ValueError("boom")

    async def consume() -> None:
        async for _ in coalesced(failing(), RATE, lead_s=0.3, max_s=0.25):
            pass

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(consume())


@pytest.mark.parametrize("while_holding", [False, True])
def test_closing_it_closes_the_source(while_holding: bool) -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[np.ndarray, None]:
        try:
            for _ in range(20):  # 2 s of audio at once: the listener is soon ahead and chunks are held
                yield np.zeros(100, dtype=np.float32)
            await asyncio.Event().wait()  # then the model takes its time
        finally:
            closed.set()

    async def consume() -> None:
        pieces = coalesced(endless(), RATE, lead_s=0.3, max_s=0.25)
        async for piece in pieces:
            if not while_holding or len(piece) > 100:
                break
        await pieces.aclose()
        assert closed.is_set()

    asyncio.run(asyncio.wait_for(consume(), 10))
