"""voxcpm's forward pass over several requests at once: its layer math, written over its own modules and
weights, following its ``_inference`` line by line, with what a batch needs that voxcpm's batch-of-one code
does not do. ``runner.py`` decides which requests go through it and keeps their state between steps.

- **Prefill** of the requests that join together runs packed: their tokens one after another in one
  sequence, without padding, so that every token-wise module (projections, norms, MLPs, the local
  encoder) runs once for all of them, and attention runs per request over its own tokens, exactly as
  voxcpm runs it (padding several prompts to one length is not exact): on CPU one call per request, on a
  GPU one variable-length flash-attention call for all of them (``varlen_attn``, the kernel voxcpm's own
  causal attention runs there, over each request's tokens alone), so a burst's prefill launches O(layers)
  kernels, not O(requests x layers).
- **LM steps** write each row's key and value at the row's own position and attend over the slots'
  filled part with a per-row mask (``MiniCPMAttention.forward_step`` writes one position into every row),
  with rotary embeddings shaped per row. Masked attention gives the same bits whatever the length of the
  buffer it runs over; slicing the keys instead does not.
- **Diffusion** draws each row's noise from the request's own generator (before the step: ``StepInputs``),
  scales each row's guidance by its own ``cfg_value`` (in float32, rounded as voxcpm's scalar product
  rounds), and runs the rows that share ``inference_timesteps`` together, conditional then unconditional
  rows, as voxcpm's CFG does.
- **LoRA adapters** are each row's own (``lora.py``): the routing says which rows (a prefill's tokens, the
  diffusion's conditional and unconditional halves) take which adapter.
- **A step is its inputs' function** (device work only, no host values read back), so on a GPU it can be
  replayed from a CUDA graph.

In bfloat16 (the real checkpoints' dtype) every module here gives the same bits at every batch size on
CPU, so a request's latents are the reference engine's bit for bit whatever else is in the batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional
from torch.nn.attention.varlen import varlen_attn
from voxcpm.modules.minicpm4.model import apply_rotary_pos_emb

from serve_app.model.adapters import LoadedAdapter
from serve_app.model.batched.kv_slots import KVSlots
from serve_app.model.batched.lora import AdapterRouting
from serve_app.model.inputs import ModelInputs
from serve_app.model.transfer import to_device

SWAY_SAMPLING_COEF = 1.0  # voxcpm's UnifiedCFM.forward defaults, which its _inference keeps
USE_CFG_ZERO_STAR = True
LayerCache = tuple[torch.Tensor, torch.Tensor]  # one layer's packed keys and values, (1, kv_heads, tokens, head_dim)
Adapters = Sequence[LoadedAdapter | None] | None  # each request's (row's) adapter; None: all the base model


@dataclass
class StepInputs:
    """Everything a decode step reads besides the KV slots and the weights, a row per request (on the model's
    device): what a CUDA graph of the step keeps static buffers of."""

    lm_hidden: torch.Tensor  # (rows, hidden)
    residual_hidden: torch.Tensor  # (rows, hidden)
    condition: torch.Tensor  # (rows, patch_size, latent_dim): each row's previous patch
    noise: torch.Tensor  # (rows, latent_dim, patch_size): where each row's diffusion starts, from its generator
    cfg: torch.Tensor  # (rows, 1, 1) float32: each row's cfg_value
    positions: torch.Tensor  # (rows,) int64: where each row writes in its KV slot


@dataclass
class StepOutput:
    patches: torch.Tensor  # (rows, patch_size, latent_dim), each row's new patch (a view of ``latents``)
    latents: torch.Tensor  # (rows, latent_dim, patch_size): the same patches as the VAE decodes them
    stop: torch.Tensor  # (rows,) bool, on the model's device: the caller reads it after launching the VAE
    lm_hidden: torch.Tensor  # (rows, hidden), for the next step
    residual_hidden: torch.Tensor

    def first(self, rows: int) -> StepOutput:
        """Copies of the first ``rows`` rows (a graph's outputs are overwritten by its next replay)."""
        latents = self.latents[:rows].clone()
        return StepOutput(
            latents.transpose(1, 2),
            latents,
            self.stop[:rows].clone(),
            self.lm_hidden[:rows].clone(),
            self.residual_hidden[:rows].clone(),
        )


@dataclass
class Prefill:
    """What a packed prefill computed: the requests' hidden states, packed as their tokens are, and per layer
    of both LMs their packed keys and values (for their KV slots)."""

    lm_hidden: torch.Tensor  # (1, tokens, hidden)
    residual_hidden: torch.Tensor
    base_caches: list[LayerCache]
    residual_caches: list[LayerCache]


class BatchedVoxCPM:
    """One voxcpm model's math for a batch of requests."""

    def __init__(self, model: Any, routing: AdapterRouting | None = None) -> None:
        self.model = model
        self.v2 = type(model).__name__ == "VoxCPM2Model"
        self.routing = routing  # the model's LoRA layers' (``lora.py``), when it serves adapters

    @contextlib.contextmanager
    def _adapters(self, adapters: Adapters, dim: int = 0, lengths: list[int] | None = None) -> Iterator[None]:
        if self.routing is None or adapters is None:
            yield
            return
        with self.routing.rows(adapters, dim, lengths):
            yield

    def prefill(self, batch: list[ModelInputs], starts: torch.Tensor | None, adapters: Adapters = None) -> Prefill:
        """voxcpm's prefill (``_inference`` before its loop) of each request, the requests packed together;
        ``starts``: where each request starts in the packed sequence (and where the last ends) for one
        variable-length attention call per layer, else None for one call per request."""
        lengths = [inputs.text.shape[1] for inputs in batch]
        with self._adapters(adapters, dim=1, lengths=lengths):
            return self._prefill(batch, lengths, starts)

    def _prefill(self, batch: list[ModelInputs], lengths: list[int], starts: torch.Tensor | None) -> Prefill:
        model = self.model
        feat, feat_mask, text, text_mask = (
            torch.cat([getattr(inputs, name) for inputs in batch], dim=1)
            for name in ("feat", "feat_mask", "text", "text_mask")
        )
        feat_embed = model.enc_to_lm_proj(model.feat_encoder(feat))
        lm_config = model.config.lm_config
        scale_emb = lm_config.scale_emb if lm_config.use_mup else 1.0
        text_embed = model.base_lm.embed_tokens(text) * scale_emb
        feat_mask, text_mask = feat_mask.unsqueeze(-1), text_mask.unsqueeze(-1)
        combined = text_mask * text_embed + feat_mask * feat_embed
        enc_outputs, base_caches = self.lm_prefill(model.base_lm, combined, lengths, starts)
        enc_outputs = model.fsq_layer(enc_outputs) * feat_mask + enc_outputs * text_mask
        residual_input = self._residual_input(enc_outputs, feat_mask * feat_embed)
        residual_outputs, residual_caches = self.lm_prefill(model.residual_lm, residual_input, lengths, starts)
        return Prefill(enc_outputs, residual_outputs, base_caches, residual_caches)

    def step(
        self,
        inputs: StepInputs,
        groups: dict[int, list[int]],
        kv: tuple[KVSlots, KVSlots],
        span: int,
        first: int = 0,
        adapters: Adapters = None,
    ) -> StepOutput:
        """One generation step (one loop iteration of voxcpm's ``_inference``) from its inputs, rows grouped by
        ``inference_timesteps``, attending over the first ``span`` positions of the base and residual LMs'
        KV slots ``kv`` (row i in slot ``first + i``), where it writes each row's new key and value; row i
        with ``adapters[i]``."""
        with self._adapters(adapters):
            return self._step(inputs, groups, kv, span, first, adapters)

    def _step(
        self,
        inputs: StepInputs,
        groups: dict[int, list[int]],
        kv: tuple[KVSlots, KVSlots],
        span: int,
        first: int,
        adapters: Adapters,
    ) -> StepOutput:
        model = self.model
        mu = self._dit_input(model.lm_to_dit_proj(inputs.lm_hidden), model.res_to_dit_proj(inputs.residual_hidden))
        # (rows, latent_dim, patch_size) as the diffusion leaves it; the patches are its transposed view,
        # as in voxcpm (the local encoder's numerics depend on that memory layout)
        condition = inputs.condition.transpose(1, 2).contiguous()
        if len(groups) == 1:  # the usual case: every row shares inference_timesteps, no gather and scatter
            latents = self.diffuse(mu, condition, inputs.noise, inputs.cfg, next(iter(groups)), adapters)
        else:
            latents = torch.empty_like(condition)
            for timesteps, indices in groups.items():
                chosen = to_device(indices, mu.device)
                own = None if adapters is None else [adapters[index] for index in indices]
                latents[chosen] = self.diffuse(
                    mu[chosen], condition[chosen], inputs.noise[chosen], inputs.cfg[chosen], timesteps, own
                )
        patches = latents.transpose(1, 2)
        # The encoder's output is a strided view of its rows; for one row (voxcpm's case) that is contiguous,
        # and a projection of a strided batch takes another GEMM path with other rounding: copy it first.
        embed = model.enc_to_lm_proj(model.feat_encoder(patches.unsqueeze(1)).contiguous())[:, 0, :]
        stop = model.stop_head(model.stop_actn(model.stop_proj(inputs.lm_hidden))).argmax(dim=-1)
        positions = inputs.positions
        new_lm_hidden = model.fsq_layer(self.lm_step(model.base_lm, kv[0], positions, span, embed, first))
        residual_input = self._residual_input(new_lm_hidden, embed)
        new_residual = self.lm_step(model.residual_lm, kv[1], positions, span, residual_input, first)
        return StepOutput(patches, latents, stop == 1, new_lm_hidden, new_residual)

    def _dit_input(self, from_lm: torch.Tensor, from_residual: torch.Tensor) -> torch.Tensor:
        return torch.cat((from_lm, from_residual), dim=-1) if self.v2 else from_lm + from_residual

    def _residual_input(self, lm_hidden: torch.Tensor, feat_embed: torch.Tensor) -> torch.Tensor:
        if self.v2:
            return self.model.fusion_concat_proj(torch.cat((lm_hidden, feat_embed), dim=-1))
        return lm_hidden + feat_embed

    def diffuse(
        self,
        mu: torch.Tensor,
        cond: torch.Tensor,
        x: torch.Tensor,
        cfg: torch.Tensor,
        timesteps: int,
        adapters: Adapters = None,
    ) -> torch.Tensor:
        """voxcpm's ``UnifiedCFM.forward`` and ``solve_euler`` over rows that share ``timesteps``, from each row's
        noise ``x``, guidance scaled by each row's ``cfg`` (its ``cfg_value``), with each row's adapter."""
        with self._adapters(None if adapters is None else [*adapters, *adapters]):  # conditional, unconditional
            return self._diffuse(mu, cond, x, cfg, timesteps)

    def _diffuse(
        self, mu: torch.Tensor, cond: torch.Tensor, x: torch.Tensor, cfg: torch.Tensor, timesteps: int
    ) -> torch.Tensor:
        cfm = self.model.feat_decoder
        b = mu.shape[0]
        t_span = torch.linspace(1, 0, timesteps + 1, device=mu.device, dtype=mu.dtype)
        t_span = t_span + SWAY_SAMPLING_COEF * (torch.cos(torch.pi / 2 * t_span) - 1 + t_span)
        t, dt = t_span[0], t_span[0] - t_span[1]
        zero_init_steps = max(1, int(len(t_span) * 0.04))
        for step in range(1, len(t_span)):
            if USE_CFG_ZERO_STAR and step <= zero_init_steps:
                dphi_dt = torch.zeros_like(x)
            else:
                t_in = t.expand(2 * b)
                dt_in = dt.expand(2 * b) if cfm.mean_mode else torch.zeros_like(t_in)
                estimate = cfm.estimator(
                    torch.cat([x, x]), torch.cat([mu, torch.zeros_like(mu)]), t_in, torch.cat([cond, cond]), dt_in
                )
                positive, negative = torch.split(estimate, [b, b], dim=0)
                st_star = cfm.optimized_scale(positive.view(b, -1), negative.view(b, -1)).view(b, 1, 1)
                difference = positive - negative * st_star
                dphi_dt = negative * st_star + (difference.to(torch.float32) * cfg).to(difference.dtype)
            x = x - dt * dphi_dt
            t = t - dt
            if step < len(t_span) - 1:
                dt = t - t_span[step + 1]
        return x

    def lm_prefill(
        self, lm: Any, hidden: torch.Tensor, lengths: list[int], starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """``MiniCPMModel.forward`` (causal) over requests packed in one sequence: (hidden states, per layer
        the packed keys and values, (1, kv_heads, tokens, head_dim))."""
        rotary = None
        if lm.rope_emb is not None:  # each request's positions start at 0
            rotary = lm.rope_emb(torch.cat([torch.arange(length, device=hidden.device) for length in lengths]))
        caches: list[LayerCache] = []

        def attend(index: int, attention: Any, normed: torch.Tensor) -> torch.Tensor:
            attended, cache = self.packed_attention(attention, normed, rotary, lengths, starts)
            caches.append(cache)
            return attended

        return _layers(lm, hidden, attend), caches

    def lm_step(
        self, lm: Any, kv: KVSlots, positions: torch.Tensor, span: int, hidden: torch.Tensor, first: int = 0
    ) -> torch.Tensor:
        """``MiniCPMModel.forward_step`` for rows 0..n-1 in slots ``first``.., each at its own position in its own
        slot, attending over the first ``span`` positions of the slots with a per-row mask."""
        rows = hidden.shape[0]
        rotary = None
        if lm.rope_emb is not None:
            cos, sin = lm.rope_emb(positions)
            rotary = (cos[:, None, None, :], sin[:, None, None, :])
        mask = (torch.arange(span, device=hidden.device)[None, :] <= positions[:, None]).view(rows, 1, 1, -1)
        every_row = torch.arange(rows, device=hidden.device)

        def attend(index: int, attention: Any, normed: torch.Tensor) -> torch.Tensor:
            cache = kv.layer(index, rows, span, first)
            return self._attention(attention, normed, rotary, (every_row, positions), cache, mask)

        return _layers(lm, hidden, attend)

    @staticmethod
    def packed_attention(
        attention: Any,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        lengths: list[int],
        starts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """``MiniCPMAttention.forward`` (causal) per request of a packed sequence: projections over all of it,
        attention over each request's own tokens, with the tensors laid out as voxcpm lays them out (one call
        per request), or in one variable-length call given the requests' ``starts``. Returns the output and
        the packed keys and values."""
        tokens, heads, head_dim = hidden.shape[1], attention.num_heads, attention.head_dim
        kv_heads = attention.num_key_value_heads
        query = attention.q_proj(hidden).view(1, tokens, heads, head_dim).transpose(1, 2)
        key = attention.k_proj(hidden).view(1, tokens, kv_heads, head_dim).transpose(1, 2)
        value = attention.v_proj(hidden).view(1, tokens, kv_heads, head_dim).transpose(1, 2)
        if rotary is not None:
            query, key = apply_rotary_pos_emb(query, key, *rotary)
        if starts is not None:
            longest = max(lengths)
            # (tokens, heads, dim), as flash attention's variable-length kernel takes them; window (-1, 0): causal
            packed_query, packed_key, packed_value = (
                tensor[0].transpose(0, 1).contiguous() for tensor in (query, key, value)
            )
            output = varlen_attn(
                packed_query, packed_key, packed_value, starts, starts, longest, longest, window_size=(-1, 0)
            )
            assert isinstance(output, torch.Tensor)  # not the (output, logsumexp) pair asked for by return_aux
            return attention.o_proj(output.reshape(1, tokens, heads * head_dim)), (key, value)
        outputs = []
        start = 0
        for length in lengths:
            span = slice(start, start + length)
            output = functional.scaled_dot_product_attention(
                query[:, :, span].contiguous(),
                key[:, :, span].contiguous(),
                value[:, :, span].contiguous(),
                is_causal=True,
                enable_gqa=True,
            )
            outputs.append(output.transpose(1, 2).contiguous().reshape(1, length, heads * head_dim))
            start += length
        return attention.o_proj(torch.cat(outputs, dim=1)), (key, value)

    @staticmethod
    def _attention(
        attention: Any,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        written: tuple[torch.Tensor, torch.Tensor],
        cache: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``MiniCPMAttention.forward_step`` with a per-row cache write (``written``: each row's index and
        position) and a per-row mask."""
        rows, heads, head_dim = hidden.shape[0], attention.num_heads, attention.head_dim
        kv_heads = attention.num_key_value_heads
        query = attention.q_proj(hidden).view(rows, 1, heads, head_dim).transpose(1, 2)
        key = attention.k_proj(hidden).view(rows, 1, kv_heads, head_dim).transpose(1, 2)
        value = attention.v_proj(hidden).view(rows, 1, kv_heads, head_dim).transpose(1, 2)
        if rotary is not None:
            query, key = apply_rotary_pos_emb(query, key, *rotary)
        keys, values = cache
        keys[written[0], :, written[1], :] = key[:, :, 0, :]
        values[written[0], :, written[1], :] = value[:, :, 0, :]
        output = functional.scaled_dot_product_attention(
            query.contiguous(), keys, values, attn_mask=mask, enable_gqa=True
        )
        return attention.o_proj(output.transpose(1, 2).contiguous().reshape(rows, heads * head_dim))


def _layers(lm: Any, hidden: torch.Tensor, attend: Callable[[int, Any, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``MiniCPMDecoderLayer`` after ``MiniCPMDecoderLayer`` and the final norm, attention as ``attend`` does it."""
    for index, layer in enumerate(lm.layers):
        residual = hidden
        attended = attend(index, layer.self_attn, layer.input_layernorm(hidden))
        hidden = residual + (attended * _depth_scale(layer) if layer.use_mup else attended)
        residual = hidden
        mlp = layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = residual + (mlp * _depth_scale(layer) if layer.use_mup else mlp)
    return lm.norm(hidden)


def _depth_scale(layer: Any) -> float:
    return layer.scale_depth / math.sqrt(layer.num_hidden_layers)
