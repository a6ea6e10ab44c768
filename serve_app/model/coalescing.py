"""Fewer, larger chunks for a stream whose listener is already well ahead of playback.

Every chunk a stream sends costs CPU at each hop after the model, whatever its size: Ray's object transfer to
the ingress, the ingress's handle and encoder, and the ASGI message to Serve's proxy (docs/engines.md: Fewer,
larger chunks once a listener is ahead). A step's chunk is a patch of audio, so a batch of streams sends one
per stream per step. Once a listener holds more audio than it can play before the next step, a chunk sent now
or a few steps later sounds the same: the chunks are held and sent together, and the listener is never let
fall below half the lead it had when holding began, even if the model stalls. The first chunks are never held
(time to first audio is what a listener waits for) and neither is a stream that generates no faster than real
time (its listener has no lead). Opt-in per model (``stream_coalesce_lead_s``): by default every chunk leaves
as soon as it is decoded, as the API promises.

Hand-written: this is a policy on our own stream (how much audio a listener has in hand), not
something a library provides; Serve already batches the HTTP messages between the ingress and its
proxy, but not the items of a streaming call between deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import numpy as np


async def coalesced(
    chunks: AsyncGenerator[np.ndarray, None],
    sample_rate: int,
    lead_s: float,
    max_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[np.ndarray]:
    """``chunks``, joined while the listener is at least ``lead_s`` ahead, up to ``max_s`` of audio at a time
    (or one chunk, if longer).

    The listener is assumed to play from the moment the first chunk left, in real time; what it has in
    hand is then the audio sent so far minus the time since. ``lead_s`` 0 passes every chunk through.
    Closing this iterator closes ``chunks`` (cancelling the generation behind it).
    """
    held: list[np.ndarray] = []
    sent = 0  # samples
    started: float | None = None  # when the first chunk left
    coming: asyncio.Future[np.ndarray] | None = None  # the next chunk, while it is awaited with a deadline

    def release(*more: np.ndarray) -> np.ndarray:
        nonlocal held, sent
        parts = [*held, *more]
        piece = np.concatenate(parts) if len(parts) > 1 else parts[0]
        held, sent = [], sent + len(piece)
        return piece

    try:
        while True:
            if held:  # wait for the next chunk only until the listener is down to half its lead
                coming = coming or asyncio.ensure_future(anext(chunks))
                deadline = started + sent / sample_rate - lead_s / 2  # type: ignore[operator]
                await asyncio.wait({coming}, timeout=max(0.0, deadline - clock()))
                if not coming.done():
                    yield release()
                    continue
            try:
                chunk = await (coming or anext(chunks))
            except StopAsyncIteration:
                break
            finally:
                if coming is not None and coming.done():
                    coming = None
            if held and sum(map(len, held)) + len(chunk) > max_s * sample_rate:
                yield release()  # full: out before the chunk that would overflow it
            now = clock()
            if lead_s > 0 and started is not None and sent / sample_rate - (now - started) >= lead_s:
                held.append(chunk)
                continue
            started = now if started is None else started
            yield release(chunk)
        if held:
            yield release()
    finally:
        if coming is not None:
            coming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await coming
        await chunks.aclose()
