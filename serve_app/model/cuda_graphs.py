"""CUDA graphs of work over a batch of rows: captured for a few batch sizes, replayed for any batch, padded.

On a GPU the batched engine's work per step is thousands of small kernels (the two LM steps, each
diffusion step's estimator call with its CFG rows, the projections, the VAE's convolutions and their
states), and launching them one by one from the host is what bounds it (docs/engines.md: CUDA graphs). A
CUDA graph launches a whole captured call at once.

Laid out as nano-vllm's ``capture_cudagraph``: graphs for batch sizes 1, 2, 4, 8 and every 16 up to the
slots (and the slots themselves), the largest captured first so that the rest share its memory pool. A
call for n rows copies its inputs into the static buffers of the smallest graph that holds it, zeroes
the padding rows and replays; the caller gets copies of the first n rows of the outputs (the next replay
overwrites them). A graph may also be captured per key: another shape of the work than its rows (the
decode step's attended span). Padding rows compute from zeros; whatever state they write must belong to
no request: rows n.. must be free slots (which a joining request resets), so a call over only some of the
requests held (a step that leaves background rows out) pads nothing (``pad``).

On CPU nothing is captured: the same static buffers and padding are used and a "replay" computes eagerly
on them, which is how the tests check that neither changes a bit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, Self, TypeVar

import torch

logger = logging.getLogger(__name__)


class Rows(Protocol):
    """A dataclass of tensors with a row per request, first dimension."""

    def first(self, rows: int) -> Self: ...


Inputs = TypeVar("Inputs")  # a dataclass of tensors with a row per request, first dimension
Outputs = TypeVar("Outputs", bound=Rows)


class PaddedGraphs(Generic[Inputs, Outputs]):
    def __init__(
        self,
        name: str,
        compute: Callable[[Inputs, Any], Outputs],
        blank: Callable[[int], Inputs],
        slots: int,
        keys: list[Any],
        capture: bool,
    ) -> None:
        """``compute(inputs, key)``: the work over all of ``inputs``' rows (device work only: capturable);
        ``blank(rows)``: zeroed inputs for ``rows`` rows, a graph's static buffers."""
        self._compute = compute
        self.sizes = sorted({size for size in (1, 2, 4, 8, *range(16, slots + 1, 16), slots) if size <= slots})
        self._graphs: dict[tuple[int, Any], tuple[Inputs, Outputs | None, torch.cuda.CUDAGraph | None]] = {}
        pool = None
        for size in reversed(self.sizes):
            inputs = blank(size)
            for key in reversed(keys):
                graph = outputs = None
                if capture:
                    graph, outputs = _captured(functools.partial(compute, inputs, key), pool)
                    pool = graph.pool()
                self._graphs[size, key] = (inputs, outputs, graph)
        if capture:
            logger.info("captured %d CUDA graphs of the %s (batch sizes %s)", len(self._graphs), name, self.sizes)

    @property
    def captured(self) -> int:
        """Graphs held (each batch size and key)."""
        return len(self._graphs)

    def run(self, inputs: Inputs, rows: int, key: Any, pad: bool = True) -> Outputs | None:
        """The work over ``inputs``' ``rows`` rows from a graph, or None where none holds it (the caller computes
        it eagerly); without ``pad``, only from a graph of exactly that many rows."""
        size = next((size for size in self.sizes if size >= rows), None)
        if size is None or (size, key) not in self._graphs or (size != rows and not pad):
            return None
        static, outputs, graph = self._graphs[size, key]
        for field in dataclasses.fields(static):  # type: ignore[arg-type]
            buffer = getattr(static, field.name)
            buffer[:rows].copy_(getattr(inputs, field.name))
            buffer[rows:].zero_()
        if graph is None:
            return self._compute(static, key).first(rows)
        graph.replay()
        assert outputs is not None
        return outputs.first(rows)


WARM_UP_CALLS = 3  # TorchScript (voxcpm's snake activation) compiles its fused kernel at a shape's second call


def _captured(work: Callable[[], Outputs], pool: Any) -> tuple[torch.cuda.CUDAGraph, Outputs]:
    """``work`` captured as a graph, after eager runs on a side stream (which do what a first call does
    lazily, outside the capture), as PyTorch's guide does it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(WARM_UP_CALLS):
            work()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
        outputs = work()
    return graph, outputs
