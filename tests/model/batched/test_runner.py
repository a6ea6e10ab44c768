"""The step runner's prefill: requests packed into one pass, their keys, values and hidden states written
into their slots.
"""

from __future__ import annotations

import functools
import itertools

import torch

from serve_app.model.batched import layers
from serve_app.model.types import SynthesisRequest


def test_the_gpu_prefill_hands_the_packed_requests_to_one_variable_length_call(engines: tuple, monkeypatch) -> None:
    """On a GPU the packed prefill's attention is one ``varlen_attn`` call per layer (CUDA only: flash
    attention). Here a stand-in with its contract (packed (tokens, heads, dim) tensors, int32 offsets, the
    longest length, causal) attends per request: the prefill gives the per-request path's bits, KV slots
    included, so the packing around the call is right (the kernel itself: tests/model/test_cuda.py). The check a
    runner makes at start takes such a kernel, and refuses one that fails or attends otherwise."""
    _, batched, _ = engines
    runner, runtime = batched.runner, batched.runtime

    def stand_in(*tensors_and_starts: torch.Tensor, window_size: tuple[int, int], causal: bool = True) -> torch.Tensor:
        query, key, value, starts, key_starts, longest, key_longest = tensors_and_starts
        assert window_size == (-1, 0) and starts is key_starts and starts.dtype == torch.int32
        bounds = starts.tolist()
        assert longest == key_longest == max(end - start for start, end in itertools.pairwise(bounds))
        outputs = []
        for start, end in itertools.pairwise(bounds):
            one = (tensor[start:end].transpose(0, 1).unsqueeze(0).contiguous() for tensor in (query, key, value))
            attended = torch.nn.functional.scaled_dot_product_attention(*one, is_causal=causal, enable_gqa=True)
            outputs.append(attended[0].transpose(0, 1))
        return torch.cat(outputs)

    def failing(*_: object, **__: object) -> torch.Tensor:
        raise RuntimeError("no kernel image is available for execution on the device")

    batch = []
    for text in ["短句。", "A longer sentence with a few more tokens in it.", "第三个请求的文本稍微长一点。"]:
        request = SynthesisRequest(text=text, seed=1)
        batch.append(runtime.model_inputs(next(runtime.utterance(request)), request))
    per_request = runner.prefill(batch, [0, 1, 2])
    slots = (runner.base_kv.cache, runner.residual_kv.cache, *vars(runner.hidden.rows(0, 3)).values())
    written = [tensor.clone() for tensor in slots]  # keys, values, and each slot's hidden state and condition
    monkeypatch.setattr(layers, "varlen_attn", stand_in)
    monkeypatch.setattr(runner, "varlen_prefill", True)
    assert runner.prefill(batch, [0, 1, 2]) == per_request  # the lengths
    for before, after in zip(written, slots, strict=True):
        assert torch.equal(before, after)
    assert runner.varlen_agrees()
    monkeypatch.setattr(layers, "varlen_attn", functools.partial(stand_in, causal=False))
    assert not runner.varlen_agrees()
    monkeypatch.setattr(layers, "varlen_attn", failing)
    assert not runner.varlen_agrees()
