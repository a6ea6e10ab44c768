"""The incremental VAE decoder against voxcpm's whole-utterance decode, on both architectures' VAEs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from serve_app.model.vae import StreamingVAEDecoder, fuse_weight_norm, pointwise_step

STEPS = 12


@pytest.fixture(scope="module", params=["tiny-voxcpm1.5", "tiny-voxcpm2"])
def vae(request: pytest.FixtureRequest, synthetic_checkpoint: Callable[..., Path]) -> torch.nn.Module:
    from voxcpm import VoxCPM

    checkpoint = synthetic_checkpoint(request.param)
    tts = VoxCPM.from_pretrained(str(checkpoint), load_denoiser=False, optimize=False, device="cpu")
    return tts.tts_model.audio_vae


@torch.inference_mode()
def test_patch_by_patch_is_the_whole_decode_and_rows_keep_their_own_state(vae: torch.nn.Module) -> None:
    torch.manual_seed(0)
    patch = 2
    latents = torch.randn(3, vae.latent_dim, patch * STEPS)
    whole = vae.decode(latents).squeeze(1)
    decoder = StreamingVAEDecoder(vae, slots=4)
    slots = [3, 0, 1]  # any slot per row
    pieces = [decoder.decode(latents[:, :, i * patch : (i + 1) * patch], slots) for i in range(STEPS)]
    assert (torch.cat(pieces, dim=-1) - whole).abs().max() < 1e-5
    decoder.move(3, 2)  # a row carried to another slot goes on where it was
    decoder.reset([0])  # a reset slot starts a new signal
    more = torch.randn(2, vae.latent_dim, patch)
    moved = decoder.decode(more[:1], [2])
    fresh = decoder.decode(more[1:], [0])
    continued = vae.decode(torch.cat([latents[:1], more[:1]], dim=-1)).squeeze(1)[:, -moved.shape[-1] :]
    assert (moved - continued).abs().max() < 1e-5
    assert (fresh - vae.decode(more[1:]).squeeze(1)).abs().max() < 1e-5


@torch.inference_mode()
def test_fusing_weight_norm_changes_no_bit(vae: torch.nn.Module) -> None:
    latents = torch.randn(1, vae.latent_dim, 8)
    before = vae.decode(latents)
    fuse_weight_norm(vae)
    assert torch.equal(vae.decode(latents), before)


@torch.inference_mode()
def test_warm_up_leaves_every_slot_as_new(vae: torch.nn.Module) -> None:
    """The warm-up decodes at every batch size (building the kernels), then forgets it: every slot decodes
    as a fresh decoder's does."""
    latents = torch.randn(3, vae.latent_dim, 4)
    slots = [0, 2, 1]
    want = StreamingVAEDecoder(vae, slots=3).decode(latents, slots)
    warmed = StreamingVAEDecoder(vae, slots=3)
    warmed.warm_up(frames=2)
    assert torch.equal(warmed.decode(latents, slots), want)


@torch.inference_mode()
def test_pointwise_convolutions_give_each_row_the_bits_of_a_row_alone(vae: torch.nn.Module) -> None:
    """In a batch, the 1x1 convolutions run as PyTorch runs them for one row (not through oneDNN): each row's
    output is what it would be alone, and at one row it is the module's own output."""
    decoder = StreamingVAEDecoder(vae, slots=4)
    assert decoder.pointwise, "the VAE has 1x1 convolutions"
    for module in decoder.pointwise:
        rows = torch.randn(5, module.in_channels, 9)
        batched = pointwise_step(module, rows)
        assert torch.equal(batched[2:3], pointwise_step(module, rows[2:3]))
        assert torch.equal(pointwise_step(module, rows[:1]), module(rows[:1]))


@torch.inference_mode()
def test_a_swap_carries_each_row_into_the_other_slot(vae: torch.nn.Module) -> None:
    torch.manual_seed(1)
    first, then = torch.randn(2, vae.latent_dim, 4), torch.randn(2, vae.latent_dim, 2)
    swapped, kept = StreamingVAEDecoder(vae, slots=2), StreamingVAEDecoder(vae, slots=2)
    for decoder in (swapped, kept):
        decoder.decode(first, [0, 1])
    swapped.swap(0, 1)
    assert torch.equal(swapped.decode(then, [1, 0]), kept.decode(then, [0, 1]))
