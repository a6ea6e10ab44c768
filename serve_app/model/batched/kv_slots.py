"""KV slots: one language model's key/value cache with a row per request (voxcpm's has one row).

voxcpm's ``StaticKVCache`` holds one length for every row, so it serves one generation. Here each slot
is a request's own row, filled from that request's prefill (computed alone, exactly as voxcpm does) and
written at the request's own position each step. The requests in the batch occupy slots 0..n-1, so a
step's cache is a view of the first n rows, never a copy; when one leaves, the last one moves into its
slot (``move``). Positions a slot's request never wrote hold zeros: a left-over NaN or Inf would turn masked
attention into NaN. Each slot remembers how far it was written, so that a new request zeroes, and a move
copies, only that part, not the slot's whole length (a full-size model's slot is ~50 MB in bfloat16).
"""

from __future__ import annotations

import torch


class KVSlots:
    def __init__(self, lm: torch.nn.Module, slots: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        config = lm.config
        head_dim = config.kv_channels or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, 2, slots, config.num_key_value_heads, length, head_dim)
        # written through now, not left to the allocator's lazily zeroed pages: on CPU the first request in
        # each slot would otherwise pay the page faults of its whole slot in the middle of the batch's step
        self.cache = torch.empty(shape, device=device, dtype=dtype).zero_()
        self.length = length
        self._written = [0] * slots  # per slot: positions from here on are zeros

    @property
    def bytes(self) -> int:
        return self.cache.numel() * self.cache.element_size()

    def layer(self, index: int, rows: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer for the first ``rows`` slots and ``span`` positions:
        (rows, kv_heads, span, head_dim) views."""
        return self.cache[index, 0, :rows, :, :span], self.cache[index, 1, :rows, :, :span]

    def fill(self, slot: int, prefill: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A request's prefill (per layer, keys and values (1, kv_heads, tokens, head_dim)) into its slot."""
        tokens = prefill[0][0].shape[2]
        if self._written[slot] > tokens:  # what the slot's previous request wrote past the new prefill
            self.cache[:, :, slot, :, tokens : self._written[slot]].zero_()
        for index, (keys, values) in enumerate(prefill):
            self.cache[index, 0, slot, :, :tokens] = keys[0]
            self.cache[index, 1, slot, :, :tokens] = values[0]
        self._written[slot] = tokens

    def writing(self, positions: list[int]) -> None:
        """Slots 0..n-1 are about to be written at these positions (called before the write, so that a step
        that fails halfway leaves nothing unaccounted for)."""
        for slot, position in enumerate(positions):
            self._written[slot] = max(self._written[slot], position + 1)

    def move(self, source: int, target: int) -> None:
        span = max(self._written[source], self._written[target])  # the source's zeros cover the target's rest
        self.cache[:, :, target, :, :span] = self.cache[:, :, source, :, :span]
        self._written[target] = self._written[source]
