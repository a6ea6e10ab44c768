"""KV slots: a request's keys and values in its own row, zeros past what it wrote."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from serve_app.model.batched.kv_slots import KVSlots


def test_kv_slots_hold_zeros_past_what_their_request_wrote() -> None:
    """A slot is cleared only as far as its previous request wrote, and a move copies only that far: what
    a step attends to past a request's own positions must still be zeros (masked NaN would spread)."""
    config = SimpleNamespace(kv_channels=None, hidden_size=8, num_attention_heads=2, num_hidden_layers=2)
    config.num_key_value_heads = 1
    slots = KVSlots(SimpleNamespace(config=config), 2, 16, torch.device("cpu"), torch.float32)

    def prefill(*values: tuple[int, float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the packed keys and values of requests of (tokens, value)."""
        packed = torch.cat([torch.full((1, 1, tokens, 4), value) for tokens, value in values], dim=2)
        return [(packed, packed)] * 2

    slots.fill([0], [6], prefill((6, 1.0)))
    slots.writing([9])  # a step writes slot 0 at position 9
    slots.cache[:, :, 0, :, 9] = 2.0
    slots.fill([1], [3], prefill((3, 3.0)))
    slots.fill([0], [2], prefill((2, 4.0)))  # the next request in slot 0
    assert (slots.cache[:, :, 0, :, :2] == 4).all() and (slots.cache[:, :, 0, :, 2:] == 0).all()
    slots.fill([0], [6], prefill((6, 1.0)))
    slots.writing([12])
    slots.cache[:, :, 0, :, 12] = 2.0
    slots.move(1, 0)  # slot 0's request left; slot 1's takes its place
    assert (slots.cache[:, :, 0, :, :3] == 3).all() and (slots.cache[:, :, 0, :, 3:] == 0).all()
    slots.fill([1, 0], [5, 2], prefill((5, 6.0), (2, 7.0)))  # two requests joining together, packed
    assert (slots.cache[:, :, 1, :, :5] == 6).all() and (slots.cache[:, :, 1, :, 5:] == 0).all()
    assert (slots.cache[:, :, 0, :, :2] == 7).all() and (slots.cache[:, :, 0, :, 2:] == 0).all()
    slots.writing([0, 9])  # slot 1 written further than slot 0
    slots.cache[:, :, 1, :, 9] = 5.0
    slots.swap(0, 1)  # each request in the other's slot, with what it wrote
    assert (slots.cache[:, :, 0, :, :5] == 6).all() and (slots.cache[:, :, 0, :, 9] == 5).all()
    assert (slots.cache[:, :, 1, :, :2] == 7).all() and (slots.cache[:, :, 1, :, 2:] == 0).all()
