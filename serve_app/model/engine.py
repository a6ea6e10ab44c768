"""The engine interface the model deployment drives (``engine_factory.py`` chooses one per model, ``engine:``).

Two engines stand behind it, chosen in each model's config:

- ``voxcpm`` (``reference_engine.py``): voxcpm's own generation loop, one request at a time (one ``VoxCPM``
  instance keeps one static KV cache); the others wait for its thread, in arrival order.
- ``batched`` (``batched/``): many requests stepped together over voxcpm's modules and weights, each
  in a KV slot of its own, joining and leaving between steps; each request's audio is the audio the
  reference engine gives it alone.

Both share the runtime (``runtime.py``: prompts, long text, checks, model inputs, incremental VAE) and
give the deployment the same behaviour: chunks in generation order, long text in one voice, cancel
within a step, the same refusals.

Each engine does all of its torch work (loading, allocation, warm-up, generation) on one thread of its
own, and nothing else in the replica runs torch kernels. PyTorch's CPU kernels run on OpenMP, whose
worker pool belongs to the thread that calls it: a second calling thread gets a second pool, and once
the pools together outnumber the cores, GNU OpenMP stops spinning and wakes its workers with a system
call at every parallel region, which slows every small kernel several times over (docs/engines.md: One
thread for torch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from serve_app.model.adapters import read_weights
from serve_app.model.types import Chunk, ModelInfo, SynthesisRequest

if TYPE_CHECKING:
    from serve_app.model.liveness import Liveness
    from serve_app.model.runtime import VoxCPMRuntime

Started = Callable[[], None]  # called (from any thread) when the model takes the request up


class Engine(Protocol):
    """What the model deployment needs of an engine.

    ``stream`` and ``sentences`` are async iterators of float32 mono audio at ``info.sample_rate`` (and, for
    a request that asks, ``SegmentEnd`` after each sentence: where it ends in that audio); a client error
    (``serve_app.errors.ServiceError``) is raised from them before the first item when the request cannot
    be served. Closing or cancelling the iterator stops the request's generation
    within one step (``sentences``: before its next sentence) and frees what it held.
    """

    info: ModelInfo

    def stream(self, request: SynthesisRequest, started: Started) -> AsyncIterator[Chunk]:
        """Chunks as they are decoded (a step's patch, then a few steps' at a time: ``decode_grouping.py``;
        sentences crossfaded)."""
        ...

    def sentences(self, request: SynthesisRequest, started: Started) -> AsyncIterator[Chunk]:
        """Each sentence's audio once it is complete (the seed's non-streaming API, with retry_badcase)."""
        ...

    def prompt_lookups(self) -> tuple[int, int]:
        """Prompt-cache (hits, misses) since the engine was loaded (warm-up excluded)."""
        ...

    def check_adapter(self, path: str) -> None:
        """Raises a 400 naming ``weights`` unless the file at ``path`` is an adapter of this model's shape (any
        thread: it reads the file, and runs no torch kernels)."""
        ...

    def health(self) -> None:
        """Raises ``liveness.Unhealthy`` when the engine can no longer serve (its thread dead or stuck past
        ``max_step_s``, a device error), after ending every request it holds with a 503 (``liveness.py``)."""
        ...

    def close(self) -> None: ...


class RuntimeEngine:
    """What both engines share over their runtime: ``stream`` and ``sentences`` are one generation, sent as
    it is decoded or a sentence at a time, the prompt cache's counts are the runtime's, and its health is its
    thread's (``liveness.py``)."""

    runtime: VoxCPMRuntime
    info: ModelInfo
    liveness: Liveness

    def stream(self, request: SynthesisRequest, started: Started) -> AsyncIterator[Chunk]:
        return self._generation(request, started, streaming=True)

    def sentences(self, request: SynthesisRequest, started: Started) -> AsyncIterator[Chunk]:
        return self._generation(request, started, streaming=False)

    def prompt_lookups(self) -> tuple[int, int]:
        return self.runtime.prompts.cache.hits, self.runtime.prompts.cache.misses

    def health(self) -> None:
        self.liveness.check()

    def check_adapter(self, path: str) -> None:
        expected = self.runtime.adapters.expected if self.runtime.adapters is not None else {}
        read_weights(Path(path), expected)

    def _generation(self, request: SynthesisRequest, started: Started, streaming: bool) -> AsyncIterator[Chunk]:
        raise NotImplementedError


def joined(pieces: Iterable[np.ndarray]) -> np.ndarray:
    """Consecutive pieces of one signal as one array (empty float32 when there are none)."""
    return np.concatenate([np.zeros(0, np.float32), *pieces])
