"""The VAE stage alone: which patches go through the VAE now, in which calls."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from serve_app.model.batched.sequence import Sequence
from serve_app.model.batched.vae_stage import VAEStage
from serve_app.model.decode_grouping import GROUPED_STREAMS
from tests.model.batched.engines import (
    make_sequence,
)


def test_a_step_decodes_single_patches_together_and_hands_back_due_groups() -> None:
    """``decode_new``: the streams whose calls take one patch go through the VAE together; a stream holding
    patches keeps the new one and is handed back once its group is due; a busy step (more than
    ``GROUPED_STREAMS`` streams) hands back every stream that holds any, to decode all it holds at once."""
    calls: list[list[int]] = []

    def decode(latents: torch.Tensor, slots: list[int]) -> torch.Tensor:
        calls.append(list(slots))
        return torch.zeros(latents.shape[0], 4)

    decoder = SimpleNamespace(
        decode=decode,
        decode_batch=lambda latents: decode(latents, list(range(len(latents)))),
        decode_patches=lambda patches, slot: decode(torch.cat(patches, dim=-1), [slot])[0].numpy(),
    )
    stage = VAEStage(decoder, batch_invariant=False)  # type: ignore[arg-type]

    def stream(slot: int, sent: int, held: int) -> Sequence:
        sequence = make_sequence(f"s{slot}")
        sequence.slot, sequence.grouping.sent = slot, sent
        sequence.latents = [torch.zeros(1, 2, 1)] * held
        return sequence

    running = [stream(0, sent=3, held=0), stream(1, sent=0, held=0), stream(2, sent=8, held=1)]
    now, due = stage.decode_new(running, torch.zeros(3, 2, 1))
    assert calls == [[0, 1]] and list(now) == [0, 1] and due == {2}  # 8 sent: groups of 2
    stage.decode_held(running[2])
    assert calls[-1] == [2] and running[2].latents == [] and running[2].grouping.sent == 10

    busy = [stream(slot, sent=40, held=slot % 3) for slot in range(GROUPED_STREAMS + 1)]
    now, due = stage.decode_new(busy, torch.zeros(len(busy), 2, 1))
    assert due == {1, 2, 4} and [len(busy[row].latents) for row in sorted(due)] == [2, 3, 2]  # held and new, now
    assert list(now) == [0, 3] and calls[-1] == [0, 3]  # those holding nothing: a patch, together
