"""Requests into the batched engine's loop thread, and their audio back: the bridge between its callers (the
replica's event loop, or any other thread) and the one thread that owns the model.

Each request becomes a ``Sequence`` put in the loop's inbox, with a ``deliver`` that hands its chunks back
(``loop.call_soon_threadsafe`` into a queue of its own); closing its iterator flags it cancelled (its client
disconnected), and the loop retires it between steps. Output is not throttled per request (a slow reader
would stall the whole batch): what a client has not read is bounded by ``max_len`` and buffered by Serve's
proxy, as with the reference engine.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import torch

from serve_app.audio.seams import Crossfader
from serve_app.model.adapters import LoadedAdapter
from serve_app.model.batched.sequence import Sequence
from serve_app.model.engine import Started, joined
from serve_app.model.liveness import Liveness
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.types import Chunk, SynthesisRequest

END = object()  # a request's last item


class Submissions:
    def __init__(self, runtime: VoxCPMRuntime, inbox: queue.SimpleQueue[Any], liveness: Liveness) -> None:
        self._runtime = runtime
        self._inbox = inbox
        self._liveness = liveness

    def generate(self, request: SynthesisRequest, streaming: bool) -> np.ndarray:
        """The whole audio of one request, from any thread but the loop's (warm-up, tests, benchmarks)."""
        done, out = threading.Event(), []

        def deliver(item: object) -> None:
            out.append(item)
            if item is END or isinstance(item, BaseException):
                done.set()

        adapter = self._runtime.adapter(request)
        self._inbox.put(self._sequence(request, lambda: None, deliver, streaming, adapter))
        done.wait()
        if isinstance(out[-1], BaseException):
            raise out[-1]
        return joined(out[:-1])

    async def generation(self, request: SynthesisRequest, started: Started, streaming: bool) -> AsyncIterator[Chunk]:
        """The request's chunks as the loop makes them, on the caller's event loop."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        deliver = functools.partial(loop.call_soon_threadsafe, items.put_nowait)
        adapter = None  # the base model: no hop to a thread on the way to the engine
        if request.adapter is not None:
            adapter = await asyncio.to_thread(self._runtime.adapter, request)  # a file read, off the loop thread
        sequence = self._sequence(request, started, deliver, streaming, adapter)
        with self._liveness.serving(deliver):  # refused, or ended, once the loop is found dead or stuck
            self._inbox.put(sequence)
            try:
                while (item := await items.get()) is not END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item  # type: ignore[misc]
            finally:
                sequence.cancelled = True  # retired at the next step's start, if it still runs

    def _sequence(
        self,
        request: SynthesisRequest,
        started: Started,
        deliver: Callable[[object], Any],
        streaming: bool,
        adapter: LoadedAdapter | None,
    ) -> Sequence:
        generator = torch.Generator(device=self._runtime.model.device)
        generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
        crossfade, grouping = Crossfader(self._runtime.seam_samples), self._runtime.decode_grouping(streaming)
        return Sequence(request, started, deliver, crossfade, generator, grouping, adapter)
