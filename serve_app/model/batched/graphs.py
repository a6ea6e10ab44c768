"""CUDA graphs of the batched decode step: captured at start for a few batch sizes, replayed at every step.

On a GPU an eager decode step launches a few thousand small kernels (the two LM steps, each diffusion
step's estimator call with its CFG rows, the projections), and launching them is what bounds it: on an
H200 a step took 51 ms for one row and 71 ms for 64 (``benchmarks/results/batching_gpu_voxcpm1.5.md``),
so time to first audio grew with every step a burst waited for. A CUDA graph launches a whole step at once.

Laid out as nano-vllm's ``capture_cudagraph``: graphs for batch sizes 1, 2, 4, 8 and every 16 up to the
slots (and the slots themselves), the largest captured first so that the rest share its memory pool;
a step of n rows replays the smallest graph that holds it. Its padding rows compute from zeros and write
position 0 of slots no request holds (the batch holds slots 0..n-1); a request's prefill writes its
slot's position 0 before anything reads it. How far a step attends in the slots is a shape too, so
there is a graph per 1,024 positions of span. Kept outside the graphs: each request's noise, drawn from
its own generator before the replay (a graph would replay the same draw), and any step whose rows do
not all use the ``inference_timesteps`` the graphs were captured for (it runs eagerly).

On CPU nothing is captured: the same static buffers and padding are used and a "replay" computes the
step eagerly on them, which is how the tests check that neither changes a bit. The engine replays
graphs on CUDA only (``cuda_graphs``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from serve_app.model.batched.step_runner import StepInputs, StepOutput

logger = logging.getLogger(__name__)

SPAN_STEP = 1024  # positions of attended span per graph


@dataclass
class _Graph:
    inputs: StepInputs  # static buffers the replay reads
    outputs: StepOutput | None  # what the replay writes (CUDA)
    graph: torch.cuda.CUDAGraph | None  # None on CPU: computed eagerly on ``inputs``


class StepGraphs:
    def __init__(
        self,
        compute: Callable[[StepInputs, dict[int, list[int]], int], StepOutput],
        blank: Callable[[int], StepInputs],
        timesteps: int,
        slots: int,
        kv_length: int,
        capture: bool,
    ) -> None:
        self._compute = compute
        self.timesteps = timesteps
        self.sizes = sorted({size for size in (1, 2, 4, 8, *range(16, slots + 1, 16), slots) if size <= slots})
        spans = sorted({min(kv_length, start) for start in range(SPAN_STEP, kv_length + SPAN_STEP, SPAN_STEP)})
        self._graphs: dict[tuple[int, int], _Graph] = {}
        pool = None
        for size in reversed(self.sizes):
            inputs = blank(size)
            for span in spans:
                graph = outputs = None
                if capture:
                    graph, outputs = self._captured(inputs, span, pool)
                    pool = graph.pool()
                self._graphs[size, span] = _Graph(inputs, outputs, graph)
        self._spans = spans
        if capture:
            logger.info("captured %d CUDA graphs of the decode step (batch sizes %s)", len(self._graphs), self.sizes)

    def run(self, inputs: StepInputs, timesteps: int, filled: int) -> StepOutput | None:
        """The step of ``inputs``' rows (reading ``filled`` positions of their slots) from a graph, or None where
        there is none for it (the caller computes it eagerly)."""
        rows = inputs.positions.shape[0]
        size = next((size for size in self.sizes if size >= rows), None)
        span = next((span for span in self._spans if span >= filled), None)
        if timesteps != self.timesteps or size is None or span is None:
            return None
        graph = self._graphs[size, span]
        for field in dataclasses.fields(inputs):
            getattr(graph.inputs, field.name)[:rows].copy_(getattr(inputs, field.name))
        graph.inputs.positions[rows:].zero_()  # padding rows write position 0 of free slots
        if graph.graph is None:
            return self._compute(graph.inputs, {self.timesteps: list(range(size))}, span).first(rows)
        graph.graph.replay()
        assert graph.outputs is not None
        return graph.outputs.first(rows)

    def _captured(
        self, inputs: StepInputs, span: int, pool: tuple[int, int] | None
    ) -> tuple[torch.cuda.CUDAGraph, StepOutput]:
        """The step over ``inputs``' rows captured as a graph, after one eager run on a side stream (which
        initialises what a first call does lazily, outside the capture), as PyTorch's guide does it."""
        groups = {self.timesteps: list(range(inputs.positions.shape[0]))}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            self._compute(inputs, groups, span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
            outputs = self._compute(inputs, groups, span)
        return graph, outputs
