"""Hidden slots: what each request's next decode step starts from, a row per KV slot.

voxcpm's ``_inference`` carries three tensors from one step to the next: the base LM's last hidden state,
the residual LM's, and the previous patch (the diffusion's prefix condition). Here they live in buffers
with a row per slot, as the keys and values do (``kv_slots.py``): a prefill writes the joining requests'
rows, a step reads the rows of its slots as views (no gathering of per-request tensors) and writes its
outputs back in place, and a request that changes slot takes its row along (``move``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HiddenRows:
    """The hidden state of consecutive slots: views of the buffers (a step's inputs) or a step's outputs."""

    lm_hidden: torch.Tensor  # (rows, hidden)
    residual_hidden: torch.Tensor  # (rows, hidden)
    condition: torch.Tensor  # (rows, patch_size, latent_dim)


class HiddenSlots:
    def __init__(
        self, slots: int, hidden_size: int, patch_size: int, latent_dim: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.lm_hidden = torch.zeros(slots, hidden_size, device=device, dtype=dtype)
        self.residual_hidden = torch.zeros(slots, hidden_size, device=device, dtype=dtype)
        self.condition = torch.zeros(slots, patch_size, latent_dim, device=device, dtype=dtype)

    def rows(self, first: int, count: int) -> HiddenRows:
        """Slots ``first``.. ``first + count - 1``, as views."""
        chosen = slice(first, first + count)
        return HiddenRows(self.lm_hidden[chosen], self.residual_hidden[chosen], self.condition[chosen])

    def write(self, slots: list[int] | slice, values: HiddenRows) -> None:
        """``values``' rows into ``slots`` (a prefill's requests, or a step's consecutive slots)."""
        self.lm_hidden[slots] = values.lm_hidden
        self.residual_hidden[slots] = values.residual_hidden
        self.condition[slots] = values.condition

    def move(self, source: int, target: int) -> None:
        for buffer in (self.lm_hidden, self.residual_hidden, self.condition):
            buffer[target].copy_(buffer[source])

    def swap(self, one: int, other: int) -> None:
        for buffer in (self.lm_hidden, self.residual_hidden, self.condition):
            buffer[[one, other]] = buffer[[other, one]]
