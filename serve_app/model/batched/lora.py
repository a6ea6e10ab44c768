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

Group = tuple[LoadedAdapter, torch.Tensor]  # an adapter and the indices of its rows


class AdapterRouting:
    """Which rows take which adapter in the module calls in progress (one engine thread sets and reads it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.groups: list[Group] = []
        self.dim = 0

    @contextlib.contextmanager
    def rows(
        self, adapters: Sequence[LoadedAdapter | None], dim: int = 0, lengths: Sequence[int] | None = None
    ) -> Iterator[None]:
        """Row ``i`` along ``dim`` takes ``adapters[i]``; with ``lengths``, request ``i`` owns that many
        consecutive positions along ``dim`` (a packed prefill)."""
        saved = self.groups, self.dim
        self.groups, self.dim = self._groups(adapters, lengths), dim
        try:
            yield
        finally:
            self.groups, self.dim = saved

    def _groups(self, adapters: Sequence[LoadedAdapter | None], lengths: Sequence[int] | None) -> list[Group]:
        spans = lengths or [1] * len(adapters)
        indices: dict[LoadedAdapter, list[int]] = {}
        start = 0
        for adapter, span in zip(adapters, spans, strict=True):
            if adapter is not None:
                indices.setdefault(adapter, []).extend(range(start, start + span))
            start += span
        return [(adapter, to_device(rows, self.device)) for adapter, rows in indices.items()]

    @staticmethod
    def any(adapters: Sequence[LoadedAdapter | None]) -> bool:
        return any(adapter is not None for adapter in adapters)


class RoutedLoRALinear(nn.Module):
    """A voxcpm ``LoRALinear`` whose adapter is each row's own (``AdapterRouting``)."""

    def __init__(self, base: nn.Module, name: str, routing: AdapterRouting) -> None:
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.name = name
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = functional.linear(x, self.weight, self.bias)
        dim = self.routing.dim
        for adapter, rows in self.routing.groups:
            a, b = adapter.pairs(self.weight)[self.name]
            whole = rows.numel() == x.shape[dim]
            own = x if whole else x.index_select(dim, rows)
            update = functional.linear(functional.linear(own, a), b) * adapter.scaling
            if whole:
                result = result + update
            else:
                result = result.index_copy(dim, rows, result.index_select(dim, rows) + update)
        return result


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
