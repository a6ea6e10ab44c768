"""The batched engine's runner: which rows a step computes and what it keeps between steps.

It owns the requests' KV slots (``kv_slots.py``) and hidden slots (``hidden_slots.py``): a prefill writes the
joining requests' keys, values and hidden states into their slots; a step reads its slots' hidden states
and its rows' own noise (each drawn from its request's generator), runs from a CUDA graph where one was
captured for its batch size (``../cuda_graphs.py``) or eagerly, and writes its new hidden states back.
The math itself is ``layers.py``'s.

No waiting for the GPU inside a step: the few host lists a step needs (positions, ``cfg_value``s, a group's
rows) go to the device without a blocking copy (``../transfer.py``), and the stop decisions stay there
until the caller has launched the VAE, so the host keeps launching kernels while the GPU runs the earlier
ones.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.model.adapters import LoadedAdapter
from serve_app.model.batched import lora
from serve_app.model.batched.hidden_slots import HiddenRows, HiddenSlots
from serve_app.model.batched.kv_slots import KVSlots
from serve_app.model.batched.layers import BatchedVoxCPM, StepInputs, StepOutput
from serve_app.model.cuda_graphs import PaddedGraphs
from serve_app.model.inputs import ModelInputs
from serve_app.model.transfer import to_device

logger = logging.getLogger(__name__)

# A step attends over the slots' filled part, rounded up to a multiple of this (masked attention gives the
# same bits whatever the length of the buffer it runs over).
ATTENDED_POSITIONS_STEP = 256
GRAPH_SPAN_STEP = 1024  # the same for the CUDA graphs of the step, whose span is part of their shapes


@dataclass
class Row:
    """One request's part of a decode step besides its slot's hidden state."""

    position: int
    inference_timesteps: int
    cfg_value: float
    generator: torch.Generator
    adapter: LoadedAdapter | None = None


class StepRunner:
    def __init__(self, model: Any, slots: int, kv_length: int) -> None:
        self.model = model
        dtype = next(model.base_lm.parameters()).dtype
        device = torch.device(model.device)
        routing = lora.AdapterRouting(device)
        self.layers = BatchedVoxCPM(model, routing if lora.install(model, routing) else None)
        self.base_kv = KVSlots(model.base_lm, slots, kv_length, device, dtype)
        self.residual_kv = KVSlots(model.residual_lm, slots, kv_length, device, dtype)
        hidden_size, latent_dim = model.base_lm.config.hidden_size, model.feat_dim
        self.hidden = HiddenSlots(slots, hidden_size, model.patch_size, latent_dim, device, dtype)
        self.kv_length = kv_length
        self.slots = slots
        # flash attention's variable-length kernel: CUDA, half precision, Ampere or newer, and checked here
        half = dtype in (torch.float16, torch.bfloat16)
        self.varlen_prefill = device.type == "cuda" and half and torch.cuda.get_device_capability(device) >= (8, 0)
        self.varlen_prefill = self.varlen_prefill and self.varlen_agrees()
        self.graphs: PaddedGraphs[StepInputs, StepOutput] | None = None
        self._graph_timesteps = 0

    def use_graphs(self, timesteps: int, capture: bool) -> None:
        """Replay the decode steps whose rows all use ``timesteps`` from CUDA graphs (``../cuda_graphs.py``)
        captured now, per batch size and per 1,024 positions of attended span; on CPU (``capture`` False) the
        same buffers and padding computed eagerly, which is how the tests check them. Each row's noise is
        drawn from its own generator before the replay (a graph would replay one draw); other steps (rows
        with another ``inference_timesteps``) run eagerly."""
        ends = range(GRAPH_SPAN_STEP, self.kv_length + GRAPH_SPAN_STEP, GRAPH_SPAN_STEP)
        spans = sorted({min(self.kv_length, end) for end in ends})

        def compute(inputs: StepInputs, span: int) -> StepOutput:
            return self.compute(inputs, {timesteps: list(range(inputs.positions.shape[0]))}, span)

        self.graphs = PaddedGraphs("decode step", compute, self.blank, self.slots, spans, capture)
        self._graph_timesteps = timesteps

    @torch.inference_mode()
    def varlen_agrees(self) -> bool:
        """Whether the variable-length call runs on this GPU and attends as one call per request does: checked
        once, on the first layer's attention with two requests of random states."""
        attention, lengths, cache = self.model.base_lm.layers[0].self_attn, [5, 11], self.base_kv.cache
        hidden = cache.new_empty(1, sum(lengths), self.model.base_lm.config.hidden_size).normal_()
        starts = to_device([0, *itertools.accumulate(lengths)], cache.device, torch.int32)
        try:
            packed, _ = self.layers.packed_attention(attention, hidden, None, lengths, starts)
        except RuntimeError:
            logger.warning("variable-length attention unavailable: prefills attend per request", exc_info=True)
            return False
        per_request, _ = self.layers.packed_attention(attention, hidden, None, lengths, None)
        agrees = torch.allclose(packed, per_request, rtol=0.02, atol=0.02)
        if not agrees:
            logger.warning("variable-length attention disagrees with one call per request: prefills attend per request")
        return agrees

    @torch.inference_mode()
    def prefill(
        self, batch: list[ModelInputs], slots: list[int], adapters: list[LoadedAdapter | None] | None = None
    ) -> list[int]:
        """voxcpm's prefill of each request (with its adapter), the requests packed together, their keys, values
        and hidden states written into their slots once all of it is computed. Each request's length: where its
        first decode step writes."""
        lengths = [inputs.text.shape[1] for inputs in batch]
        starts = None  # where each request starts in the packed sequence, and where the last ends
        if self.varlen_prefill:
            starts = to_device([0, *itertools.accumulate(lengths)], self.base_kv.cache.device, torch.int32)
        computed = self.layers.prefill(batch, starts, adapters)
        self.base_kv.fill(slots, lengths, computed.base_caches)
        self.residual_kv.fill(slots, lengths, computed.residual_caches)
        last = to_device([end - 1 for end in itertools.accumulate(lengths)], self.base_kv.cache.device)
        self.hidden.write(
            slots,
            HiddenRows(
                lm_hidden=computed.lm_hidden[0, last],
                residual_hidden=computed.residual_hidden[0, last],
                condition=torch.cat([inputs.feat[:, -1, ...] for inputs in batch]),  # each one's last input patch
            ),
        )
        return lengths

    def move(self, source: int, target: int) -> None:
        self.base_kv.move(source, target)
        self.residual_kv.move(source, target)
        self.hidden.move(source, target)

    def swap(self, one: int, other: int) -> None:
        self.base_kv.swap(one, other)
        self.residual_kv.swap(one, other)
        self.hidden.swap(one, other)

    @torch.inference_mode()
    def step(self, rows: list[Row], first: int = 0, held: int = 0) -> StepOutput:
        """One generation step for the rows in slots ``first``.. (one loop iteration of voxcpm's ``_inference``):
        the whole batch from slot 0, the live rows below background ones (``held``: the slots the batch holds,
        which a graph's padding must not write), or the requests that just joined it, at its end; their slots'
        hidden state is the step's afterwards. Steps with adapters run eagerly (a graph replays the base
        model's)."""
        output = self._step(rows, first, held)
        written = HiddenRows(output.lm_hidden, output.residual_hidden, output.patches)
        self.hidden.write(slice(first, first + len(rows)), written)
        return output

    def _step(self, rows: list[Row], first: int, held: int) -> StepOutput:
        inputs = self._inputs(rows, first)
        written = [row.position for row in rows]
        self.base_kv.writing(written, first)
        self.residual_kv.writing(written, first)
        filled = max(written) + 1
        groups: dict[int, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            groups[row.inference_timesteps].append(index)
        adapters = [row.adapter for row in rows]
        base = all(adapter is None for adapter in adapters)
        if self.graphs is not None and first == 0 and base and groups.keys() == {self._graph_timesteps}:
            key, pad = self.span(filled, GRAPH_SPAN_STEP), held <= len(rows)
            if (replayed := self.graphs.run(inputs, len(rows), key, pad)) is not None:
                return replayed
        return self.compute(inputs, groups, self.span(filled, ATTENDED_POSITIONS_STEP), first, adapters)

    def span(self, filled: int, step: int) -> int:
        """Positions of the slots a step attends over: the filled ones, rounded up to a multiple of ``step``."""
        return min(self.kv_length, -(-filled // step) * step)

    def _inputs(self, rows: list[Row], first: int) -> StepInputs:
        """What the step reads: its slots' hidden state, and the rows' noise drawn now, each from its own
        generator."""
        model, device, dtype = self.model, self.base_kv.cache.device, self.base_kv.cache.dtype
        shape = (1, model.feat_decoder.in_channels, model.patch_size)
        hidden = self.hidden.rows(first, len(rows))
        return StepInputs(
            lm_hidden=hidden.lm_hidden,
            residual_hidden=hidden.residual_hidden,
            condition=hidden.condition,
            noise=torch.cat([torch.randn(shape, generator=row.generator, device=device, dtype=dtype) for row in rows]),
            cfg=to_device([row.cfg_value for row in rows], device, torch.float32).view(-1, 1, 1),
            positions=to_device([row.position for row in rows], device),
        )

    def blank(self, rows: int) -> StepInputs:
        """Zeroed inputs for ``rows`` rows: a graph's static buffers."""
        model, cache = self.model, self.base_kv.cache
        hidden, latent_dim, patch_size = model.base_lm.config.hidden_size, model.feat_dim, model.patch_size
        return StepInputs(
            lm_hidden=cache.new_zeros(rows, hidden),
            residual_hidden=cache.new_zeros(rows, hidden),
            condition=cache.new_zeros(rows, patch_size, latent_dim),
            noise=cache.new_zeros(rows, model.feat_decoder.in_channels, patch_size),
            cfg=cache.new_zeros(rows, 1, 1, dtype=torch.float32),
            positions=cache.new_zeros(rows, dtype=torch.int64),
        )

    def compute(
        self,
        inputs: StepInputs,
        groups: dict[int, list[int]],
        span: int,
        first: int = 0,
        adapters: list[LoadedAdapter | None] | None = None,
    ) -> StepOutput:
        return self.layers.step(inputs, groups, (self.base_kv, self.residual_kv), span, first, adapters)
