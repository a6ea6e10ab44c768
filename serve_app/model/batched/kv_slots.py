"""KV slots: one language model's key/value cache with a row per request (voxcpm's has one row).

voxcpm's ``StaticKVCache`` holds one length for every row, so it serves one generation. Here each slot
is a request's own row, filled from that request's prefill (computed as voxcpm computes it; the requests
that join together are written in one go) and written at the request's own position each step. The
requests in the batch occupy slots 0..n-1, so a step's cache is a view of the first n rows, never a
copy; when one leaves, the last one moves into its slot (``move``). Positions a slot's request never
wrote hold zeros: a left-over NaN or Inf would turn masked attention into NaN. Each slot remembers how far
it was written, so that a new request zeroes, and a move copies, only that part, not the slot's whole
length (a full-size model's slot is ~50 MB in bfloat16).
"""

from __future__ import annotations

import torch

from serve_app.model.transfer import to_device


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

    def layer(self, index: int, rows: int, span: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer for ``rows`` slots from ``first`` and ``span`` positions:
        (rows, kv_heads, span, head_dim) views."""
        slots = slice(first, first + rows)
        return self.cache[index, 0, slots, :, :span], self.cache[index, 1, slots, :, :span]

    def fill(self, slots: list[int], lengths: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The prefills of requests packed one after another (per layer their keys and values, (1, kv_heads,
        tokens, head_dim)) into their slots, ``lengths[i]`` positions into ``slots[i]``: one write per layer
        for all of them, not one per request and layer."""
        for slot, tokens in zip(slots, lengths, strict=True):
            if self._written[slot] > tokens:  # what the slot's previous request wrote past the new prefill
                self.cache[:, :, slot, :, tokens : self._written[slot]].zero_()
            self._written[slot] = tokens
        device = self.cache.device
        rows = to_device([slot for slot, tokens in zip(slots, lengths, strict=True) for _ in range(tokens)], device)
        positions = to_device([position for tokens in lengths for position in range(tokens)], device)
        for index, (keys, values) in enumerate(layers):
            self.cache[index, 0][rows, :, positions] = keys[0].transpose(0, 1)
            self.cache[index, 1][rows, :, positions] = values[0].transpose(0, 1)

    def writing(self, positions: list[int], first: int = 0) -> None:
        """Slots ``first``.. are about to be written at these positions (called before the write, so that a step
        that fails halfway leaves nothing unaccounted for)."""
        for slot, position in enumerate(positions, start=first):
            self._written[slot] = max(self._written[slot], position + 1)

    def move(self, source: int, target: int) -> None:
        span = max(self._written[source], self._written[target])  # the source's zeros cover the target's rest
        self.cache[:, :, target, :, :span] = self.cache[:, :, source, :, :span]
        self._written[target] = self._written[source]

    def swap(self, one: int, other: int) -> None:
        span = max(self._written[one], self._written[other])
        self.cache[:, :, [one, other], :, :span] = self.cache[:, :, [other, one], :, :span]
        self._written[one], self._written[other] = self._written[other], self._written[one]
