"""Each row's own LoRA adapter within one batched step, as voxcpm's ``LoRALinear`` computes it for one request.

voxcpm's layer holds one adapter: ``linear(x) + (x @ A.T @ B.T) * scaling``. Here each of its layers in the
batched engine's model is replaced by ``RoutedLoRALinear``, which holds the base weights only and, for the
call in progress, adds each adapter's update to its own rows: the rows that share an adapter are gathered,
their update computed with voxcpm's operations in voxcpm's order, and added to theirs, so a request's numbers
are the reference engine's for it alone wherever the matrix products give a row the same bits at any row
count (bfloat16 with ``batch_invariant``; otherwise within the engine's tolerance). Rows of the base model
take no update at all (voxcpm adds a zero one). The base weights are never changed, and a step whose rows are
all the base model's runs as before (its CUDA graphs too).

``AdapterRouting`` says which rows are whose: the layers set it around each part of a step (``layers.py``):
a step's rows, the diffusion's conditional and unconditional halves, a prefill's packed tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional

from serve_app.model.adapters import LoadedAdapter
from serve_app.model.transfer import to_device

Span = tuple[LoadedAdapter, int, int]  # an adapter and where its rows lie among the gathered ones: start, count


class AdapterRouting:
    """Which rows take which adapter in the module calls in progress (one engine thread sets and reads it):
    the rows with an adapter, gathered adapter by adapter (``rows``, in that order), and each adapter's span
    of them; the rows of the base model are in none."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gathered: torch.Tensor | None = None
        self.spans: list[Span] = []
        self.whole = False  # the gathered rows are every row, in order: no gather, no scatter
        self.dim = 0

    @contextlib.contextmanager
    def rows(
        self, adapters: Sequence[LoadedAdapter | None], dim: int = 0, lengths: Sequence[int] | None = None
    ) -> Iterator[None]:
        """Row ``i`` along ``dim`` takes ``adapters[i]``; with ``lengths``, request ``i`` owns that many
        consecutive positions along ``dim`` (a packed prefill)."""
        saved = self.gathered, self.spans, self.whole, self.dim
        self._route(adapters, lengths)
        self.dim = dim
        try:
            yield
        finally:
            self.gathered, self.spans, self.whole, self.dim = saved

    def _route(self, adapters: Sequence[LoadedAdapter | None], lengths: Sequence[int] | None) -> None:
        spans = lengths or [1] * len(adapters)
        by_adapter: dict[LoadedAdapter, list[int]] = {}
        start = 0
        for adapter, span in zip(adapters, spans, strict=True):
            if adapter is not None:
                by_adapter.setdefault(adapter, []).extend(range(start, start + span))
            start += span
        gathered = [row for rows in by_adapter.values() for row in rows]
        self.spans, offset = [], 0
        for adapter, rows in by_adapter.items():
            self.spans.append((adapter, offset, len(rows)))
            offset += len(rows)
        self.whole = gathered == list(range(start))
        self.gathered = to_device(gathered, self.device) if gathered and not self.whole else None


class RoutedLoRALinear(nn.Module):
    """A voxcpm ``LoRALinear`` whose adapter is each row's own (``AdapterRouting``)."""

    def __init__(self, base: nn.Module, name: str, routing: AdapterRouting) -> None:
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.name = name
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)``, plus each adapter's ``(x @ A.T @ B.T) * scaling`` on its rows: the rows gathered once,
        a pair of products per adapter on its contiguous span, then the updates scaled (every adapter has the
        model's one scaling, alpha / r) and added in one go each: per call 2 x adapters + 4 operations, which is
        what a step with many adapters pays on a CPU, where an operation on the tiny model costs microseconds."""
        result = functional.linear(x, self.weight, self.bias)
        routing = self.routing
        if not routing.spans:
            return result
        dim = routing.dim
        own = x if routing.whole else x.index_select(dim, routing.gathered)  # type: ignore[arg-type]
        updates = []
        for adapter, start, count in routing.spans:
            a, b = adapter.pairs(self.weight)[self.name]
            updates.append(functional.linear(functional.linear(own.narrow(dim, start, count), a), b))
        update = (updates[0] if len(updates) == 1 else torch.cat(updates, dim)) * routing.spans[0][0].scaling
        if routing.whole:
            return result.add_(update)
        return result.index_add_(dim, routing.gathered, update)  # type: ignore[arg-type]  # result[rows] += update


def install(model: nn.Module, routing: AdapterRouting) -> int:
    """voxcpm's LoRA layers in ``model`` replaced by routed ones (their own ``lora_A``/``lora_B`` dropped);
    returns how many."""
    from voxcpm.modules.layers.lora import LoRALinear

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attribute, RoutedLoRALinear(module, name, routing))
            replaced += 1
    return replaced
