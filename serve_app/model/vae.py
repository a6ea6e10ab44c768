"""Incremental VAE decoding: each generation step's new latent patch only, with causal-conv state per slot.

voxcpm's VAE decoders (VoxCPM 1.x and VoxCPM2 alike) are stacks of causal convolutions, so a signal can be
decoded a patch at a time if every convolution keeps the last input frames it saw. voxcpm does this for
VoxCPM2 only (``StreamingVAEDecoder``), by patching the shared modules of the one decoder for one stream at a
time; for VoxCPM 1.x it re-decodes a window of the last three patches at every step, which made streaming cost
nearly twice non-streaming (docs/engines.md: Incremental VAE decode). Here every convolution keeps one state
row per *slot*, so one decoder serves a whole batch of streams, each at its own point: the rows of a call are
the slots of the requests in the batch. The states follow voxcpm's ``StreamingVAEDecoder`` exactly (left
context of ``2 * padding - output_padding`` frames for a causal convolution, ``(kernel - 1) // stride`` input
frames for a transposed one); a slot starts from zeros, as a whole-utterance decode does.

What it matches: decoding an utterance patch by patch equals voxcpm's whole-utterance decode
(``audio_vae.decode`` of all patches, the non-streaming path) up to float32 rounding (about 4e-7,
``benchmarks/incremental_vae.py``). The CPU convolution kernels are not batch-invariant in float32
(1e-7 apart), so with ``batch_invariant`` the rows of a call are decoded one after another there, and a
request's audio never depends on what else is in the batch; otherwise the batch is one call.

On CUDA the per-step decode of a batch of streams can be replayed from CUDA graphs (``use_graphs``, as the
decode step is: ``cuda_graphs.py``); its padding rows advance the states of slots no request holds, which
a joining request resets.

On CPU the pointwise (1x1) convolutions of a batch run as one GEMM per row (``pointwise_step``), as
PyTorch runs them for a single row: for more than one row it hands them to oneDNN, whose fixed cost per
call is larger than the work. Each row gets the bits a batch of one gives it, faster (docs/engines.md:
Exactly voxcpm's audio).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from serve_app.model.cuda_graphs import PaddedGraphs
from serve_app.model.transfer import to_device

_KERNELS_PER_BATCH_SIZE = 64  # room per batch size: VoxCPM's VAE decoders have 31 to 45 convolutions


def _causal_context(module: nn.Module) -> tuple[int, int | None] | None:
    """(input frames of left context, output samples the class trims at the end) for voxcpm's causal
    convolutions (a trim of None: an ordinary causal convolution), or None for any other module."""
    kind = type(module).__name__
    if kind == "CausalConv1d":
        context = module._CausalConv1d__padding * 2 - getattr(module, "_CausalConv1d__output_padding", 0)
        return (context, None) if context > 0 else None
    if kind == "CausalTransposeConv1d":
        context = (module.kernel_size[0] - 1) // module.stride[0]
        trim = module._CausalTransposeConv1d__padding * 2 - module._CausalTransposeConv1d__output_padding
        return (context, trim) if context > 0 else None
    return None


@dataclass
class _Latents:
    latents: torch.Tensor  # (rows, latent_dim, frames), float32


@dataclass
class _Audio:
    samples: torch.Tensor  # (rows, samples)

    def first(self, rows: int) -> _Audio:
        return _Audio(self.samples[:rows].clone())


class StreamingVAEDecoder:
    """Decodes latent patches of up to ``slots`` streams at once, each carrying its own causal-conv state."""

    def __init__(self, vae: Any, slots: int, batch_invariant: bool = False) -> None:
        self._vae = vae
        self._slots = slots
        self._row_by_row = batch_invariant and next(vae.parameters()).device.type == "cpu"
        self._layers: list[tuple[nn.Module, int, int | None, torch.Tensor]] = []
        device = next(vae.parameters()).device
        for module in vae.decoder.modules():
            if (found := _causal_context(module)) is not None:
                context, trim = found
                state = torch.zeros(slots, module.in_channels, context, dtype=torch.float32, device=device)
                self._layers.append((module, context, trim, state))
        cpu = device.type == "cpu"
        self.pointwise = [module for module in vae.decoder.modules() if _is_pointwise(module)] if cpu else []
        self.graphs: PaddedGraphs[_Latents, _Audio] | None = None
        self._graph_frames = 0
        # VoxCPM2's VAE is conditioned on its output rate, which its decode would otherwise copy to the device
        # at every call (a wait for the GPU; in a CUDA graph's capture, an error): one copy, made here
        self._rate: tuple[torch.Tensor, ...] = ()
        if getattr(vae, "sr_bin_boundaries", None) is not None:
            self._rate = (torch.tensor([vae.out_sample_rate], device=device, dtype=torch.int32),)

    def use_graphs(self, frames: int, capture: bool) -> None:
        """Replay ``decode_batch`` of ``frames`` latent frames (a step's new patches, when every request in the
        batch streams) from CUDA graphs captured now; on CPU (``capture`` False) computed eagerly on the
        graphs' buffers, as the tests check them."""
        device = next(self._vae.parameters()).device
        every_slot = torch.arange(self._slots, device=device)

        def blank(rows: int) -> _Latents:
            return _Latents(torch.zeros(rows, self._vae.latent_dim, frames, device=device))

        def compute(inputs: _Latents, _frames: int) -> _Audio:
            return _Audio(self._decode_rows(inputs.latents, every_slot[: inputs.latents.shape[0]]))

        self.graphs = PaddedGraphs("VAE decode", compute, blank, self._slots, [frames], capture)
        self._graph_frames = frames

    def warm_up(self, frames: int, groups: Sequence[int] = ()) -> None:
        """Decode silence (``frames`` latent frames) once at every row count, and each of ``groups`` times as
        many frames in one row, then forget it. The first decode of a new shape builds the convolutions'
        kernels for it (oneDNN on CPU), which would otherwise delay the first
        audio of the requests that make the batch that size. (Other multi-patch calls, a sentence's last
        patches, build theirs once when they first come: a few dozen kernels each, within the cache's
        headroom.)"""
        device = next(self._vae.parameters()).device
        silence = torch.zeros(self._slots, self._vae.latent_dim, frames * max([1, *groups]), device=device)
        for rows in range(1, 2 if self._row_by_row else self._slots + 1):
            self.decode(silence[:rows, :, :frames], list(range(rows)))
        for group in groups:
            self.decode(silence[:1, :, : frames * group], [0])
        self.reset(list(range(self._slots)))

    def reset(self, slots: list[int]) -> None:
        """Forget these slots' past: the next patch of each is the start of a new signal."""
        index = to_device(slots, next(self._vae.parameters()).device)
        for *_, state in self._layers:
            state.index_fill_(0, index, 0.0)

    def move(self, source: int, target: int) -> None:
        """Carry a stream's state to another slot (the batch keeps its active slots contiguous)."""
        for *_, state in self._layers:
            state[target].copy_(state[source])

    def swap(self, one: int, other: int) -> None:
        """Two streams' states, each in the other's slot."""
        for *_, state in self._layers:
            state[[one, other]] = state[[other, one]]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Audio for ``latents`` (rows, latent_dim, frames), row i continuing slot ``slots[i]``: (rows, samples)."""
        latents = latents.to(torch.float32)
        # the slots go to the device once, not at each convolution (serve_app/model/transfer.py)
        return self._decode_rows(latents, to_device(slots, latents.device))

    def decode_patches(self, patches: list[torch.Tensor], slot: int) -> np.ndarray:
        """One request's consecutive patches (each (1, latent_dim, frames)) in one call, continuing its slot:
        its samples on the host."""
        return self.decode(torch.cat(patches, dim=-1), [slot])[0].cpu().numpy()

    @torch.inference_mode()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """``decode`` for a whole batch: row i continues slot i, and no request holds a slot after the last row
        (so a graph's padding rows may advance those). From a CUDA graph where there is one."""
        rows, frames = latents.shape[0], latents.shape[-1]
        if self.graphs is not None and frames == self._graph_frames:
            if (replayed := self.graphs.run(_Latents(latents.to(torch.float32)), rows, frames)) is not None:
                return replayed.samples
        return self.decode(latents, list(range(rows)))

    def _decode_rows(self, latents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        if self._row_by_row:
            return torch.cat([self._decode(latents[row : row + 1], slots[row : row + 1]) for row in range(len(slots))])
        return self._decode(latents, slots)

    def _decode(self, latents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        with self._installed(slots):
            return self._vae.decode(latents, *self._rate).squeeze(1)

    @contextlib.contextmanager
    def _installed(self, slots: torch.Tensor) -> Iterator[None]:
        """Each causal convolution reads and updates the given slots' states for the length of one call.
        (The modules are voxcpm's own, shared with its non-streaming decode: patched only while we decode.)"""
        for module, context, trim, state in self._layers:
            module.forward = functools.partial(_causal_step, module, context, trim, state, slots)
        for module in self.pointwise:
            module.forward = functools.partial(pointwise_step, module)
        try:
            yield
        finally:
            for module in [*(layer[0] for layer in self._layers), *self.pointwise]:
                del module.forward  # back to the class's forward


def _causal_step(
    module: nn.Module, context: int, trim: int | None, state: torch.Tensor, slots: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """One causal (transposed) convolution over new frames, continuing each row's slot state."""
    padded = torch.cat([state[slots], x], dim=-1)
    state[slots] = padded[..., -context:]
    if trim is None:
        return nn.Conv1d.forward(module, padded)
    out = nn.ConvTranspose1d.forward(module, padded)[..., context * module.stride[0] :]
    return out[..., :-trim] if trim > 0 else out


def _is_pointwise(module: nn.Module) -> bool:
    """A 1x1 convolution that neither pads nor keeps state: a GEMM per row."""
    return (
        type(module).__name__ == "CausalConv1d"
        and module.kernel_size == (1,)
        and module.stride == (1,)
        and module.groups == 1
        and _causal_context(module) is None
    )


def pointwise_step(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on CPU through PyTorch's own convolution (im2col and one GEMM per row), the kernel it
    picks for a single row, whatever the rows."""
    weight = module.weight.unsqueeze(2)
    return torch._C._nn.thnn_conv2d(x.unsqueeze(2), weight, (1, 1), module.bias, (1, 1), (0, 0)).squeeze(2)


def reserve_kernel_cache(slots: int) -> None:
    """Make room in oneDNN's kernel cache for the decoder's kernels at every batch size up to ``slots``.

    On CPU every new input shape of a convolution gets its own oneDNN kernel, so each batch size the
    decoder runs at adds one per convolution (a few dozen, each built when first met). oneDNN
    keeps 1,024 kernels per process by default: at 32 slots the warm-up's kernels alone fill it, and
    the evicted ones were built again in the middle of streams. oneDNN reads the capacity once, before
    its first kernel, so this runs before the model is loaded; a capacity set by the user is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(1024 + _KERNELS_PER_BATCH_SIZE * slots))


def fuse_weight_norm(vae: Any) -> int:
    """Store each weight-normalised convolution's weight once instead of recomputing it (``g * v / |v|``) in a
    hook before every call: the same values, so the same audio bit for bit, and one patch's decode (dozens of
    small convolutions) no longer pays for it at every step. Returns how many were fused."""
    fused = 0
    for module in vae.modules():
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)
            fused += 1
    return fused
