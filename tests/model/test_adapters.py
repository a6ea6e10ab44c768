"""LoRA adapters on real voxcpm with synthetic checkpoints and random synthetic adapters (non-zero ``lora_B``).

The reference engine copies a request's adapter into voxcpm's own LoRA layers; the batched engine applies each
row's own within one step. Each request's audio from the batched engine must be the reference engine's for it
alone with the same adapter and seed, bit for bit (bfloat16, ``batch_invariant``), whatever adapters share
its batch and whenever they join or leave; files that do not fit the model are refused naming ``weights``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from serve_app.config import LoRAShape
from serve_app.errors import BadRequest
from serve_app.model.adapters import AdapterCache, Layout, read_weights
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import SynthesisRequest
from serve_app.store.adapter_store import Adapter
from tests.conftest import FLOAT32_TOLERANCE
from tests.model.batched.engines import alone, together

PRESETS = ["tiny-voxcpm1.5", "tiny-voxcpm2"]


def random_adapter(expected: Layout, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """An adapter of the model's layout with random ``lora_A`` and non-zero random ``lora_B``, in float32 as
    voxcpm's trainer saves them."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * scale for name, shape in sorted(expected.items())}


def saved(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    safetensors.torch.save_file(tensors, str(path))
    return path


def adapter_record(path: Path, model: str, name: str) -> Adapter:
    """A record for a file on disk, as a model's config declares one (the replica reads ``file``)."""
    shape = LoRAShape().model_dump()
    return Adapter(name, name, model, **shape, file=str(path), digest=name, created=0.0, source="config")


@pytest.fixture(scope="module", params=PRESETS)
def engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic_engine: Callable[..., Any]
) -> Iterator[tuple[ReferenceEngine, BatchedEngine, list[Adapter]]]:
    common = dict(dtype="bfloat16", batch_invariant=True)
    reference = synthetic_engine(request.param, **common)
    batched = synthetic_engine(request.param, "batched", max_batch_size=4, kv_cache_length=512, **common)
    expected = reference.runtime.adapters.expected
    directory = tmp_path_factory.mktemp("adapters")
    adapters = [
        adapter_record(
            saved(random_adapter(expected, seed), directory / f"{seed}.safetensors"), request.param, f"a{seed}"
        )
        for seed in (1, 2, 3)
    ]
    yield reference, batched, adapters
    torch.backends.mkldnn.enabled = True  # batch_invariant turned it off for the process


def test_an_adapter_changes_the_audio_and_leaves_nothing_behind_for_the_base_model(engines: tuple) -> None:
    reference, _, adapters = engines
    base = SynthesisRequest(text="Hello there, adapters.", seed=7, max_len=20)
    before = alone(reference, base)
    tuned = alone(reference, dataclasses.replace(base, adapter=adapters[0]))
    other = alone(reference, dataclasses.replace(base, adapter=adapters[1]))
    assert not np.array_equal(before, tuned) and not np.array_equal(tuned, other)
    assert np.array_equal(alone(reference, base), before)  # the base model's audio, bit for bit, after an adapter
    assert np.array_equal(alone(reference, dataclasses.replace(base, adapter=adapters[0])), tuned)


@pytest.mark.parametrize("stagger_s", [0.0, 0.12])
def test_each_request_with_its_own_adapter_is_the_reference_audio_bit_for_bit(engines: tuple, stagger_s: float) -> None:
    """Six requests through four slots: three adapters and the base model mixed in one batch, joining together
    or staggered (so adapters join and leave the batch between steps), long text too."""
    reference, batched, adapters = engines
    a, b, c = adapters
    requests = [
        SynthesisRequest(text="你好世界", seed=1, max_len=20, adapter=a),
        SynthesisRequest(text="Hello there. How are you today?", seed=2, cfg_value=1.7, max_len=60, adapter=b),
        SynthesisRequest(text="测试一下", seed=3, inference_timesteps=3, max_len=15),
        SynthesisRequest(text="abc def", seed=4, max_len=12, adapter=a),
        SynthesisRequest(text="第五个请求。第二句。", seed=5, max_len=60, adapter=c),
        SynthesisRequest(text="the base model", seed=6, max_len=14),
    ]
    expected = [alone(reference, request) for request in requests]
    for request, want, got in zip(requests, expected, together(batched, requests, stagger_s), strict=True):
        assert isinstance(got, np.ndarray), got
        assert got.shape == want.shape and np.array_equal(got, want), (request.text, request.adapter)


def test_a_request_with_another_models_adapter_or_a_vanished_file_is_refused_naming_adapter(
    engines: tuple, tmp_path: Path
) -> None:
    reference, batched, adapters = engines
    foreign = dataclasses.replace(adapters[0], model="another-model")
    gone = adapter_record(tmp_path / "deleted.safetensors", adapters[0].model, "gone")
    for engine in (reference, batched):
        for adapter in (foreign, gone):
            with pytest.raises(BadRequest) as refused:
                engine.runtime.adapter(SynthesisRequest(text="hi", adapter=adapter))
            assert refused.value.field == "adapter"


def test_files_that_do_not_fit_the_model_are_refused_naming_weights(engines: tuple, tmp_path: Path) -> None:
    reference, _, _ = engines
    expected: Layout = reference.runtime.adapters.expected
    good = random_adapter(expected, 9)
    first = sorted(good)[0]
    renamed = {**{k: v for k, v in good.items() if k != first}, first.replace("self_attn", "attention"): good[first]}
    missing = {k: v for k, v in good.items() if k != first}
    other_rank = {k: (v[:16] if k.endswith("lora_A") else v[:, :16]).contiguous() for k, v in good.items()}
    not_finite = {**good, first: torch.full_like(good[first], float("nan"))}
    huge = {**good, first: good[first].to(torch.bfloat16).fill_(float("inf"))}
    integers = {**good, first: good[first].to(torch.int32)}
    cases = {"renamed": renamed, "missing": missing, "rank": other_rank, "nan": not_finite, "inf": huge}
    cases["integers"] = integers
    for label, tensors in cases.items():
        with pytest.raises(BadRequest) as refused:
            read_weights(saved(tensors, tmp_path / f"{label}.safetensors"), expected)
        assert refused.value.field == "weights", label
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "garbage.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    for name in ("garbage.safetensors", "garbage.ckpt"):
        with pytest.raises(BadRequest) as refused:
            read_weights(tmp_path / name, expected)
        assert refused.value.field == "weights"
    with pytest.raises(BadRequest):
        read_weights(saved(good, tmp_path / "good.safetensors"), {})  # a model without `lora:`


def test_a_ckpt_is_read_weights_only_and_gives_the_same_adapter(engines: tuple, tmp_path: Path) -> None:
    reference, _, _ = engines
    expected = reference.runtime.adapters.expected
    tensors = random_adapter(expected, 11)
    torch.save({"state_dict": tensors}, tmp_path / "lora_weights.ckpt")
    from_ckpt = read_weights(tmp_path / "lora_weights.ckpt", expected)
    assert all(torch.equal(from_ckpt[name], tensors[name]) for name in tensors)

    class Hostile:  # pickled code: weights_only refuses to build it
        def __reduce__(self) -> tuple:
            return (print, ("ran",))

    torch.save({**tensors, "x": Hostile()}, tmp_path / "hostile.ckpt")
    with pytest.raises(BadRequest):
        read_weights(tmp_path / "hostile.ckpt", expected)


def test_resident_adapters_are_bounded_least_recently_used_first(engines: tuple, tmp_path: Path) -> None:
    reference, _, adapters = engines
    runtime_cache = reference.runtime.adapters
    cache = AdapterCache(LoRAShape(), runtime_cache.expected, torch.bfloat16, resident=2, paths={})
    a, b, c = adapters
    path = Path
    first = cache.get(a, path(a.file))
    cache.get(b, path(b.file))
    assert cache.get(a, path(a.file)) is first and cache.loads == 2
    cache.get(c, path(c.file))  # b, the least recently used, is dropped
    assert cache.resident == 2 and cache.get(a, path(a.file)) is first and cache.loads == 3
    cache.get(b, path(b.file))
    assert cache.loads == 4


def test_in_float32_each_request_with_its_adapter_is_the_reference_audio_within_tolerance(
    synthetic_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """The tiny models' own dtype, without batch_invariant: oneDNN's kernels differ with the row count, so the
    batched audio is the reference's within the engine's stated float32 tolerance, adapters and all."""
    reference = synthetic_engine("tiny-voxcpm1.5")
    batched = synthetic_engine("tiny-voxcpm1.5", "batched", max_batch_size=4, kv_cache_length=512)
    expected = reference.runtime.adapters.expected
    a, b = (
        adapter_record(
            saved(random_adapter(expected, seed), tmp_path / f"{seed}.safetensors"), "tiny-voxcpm1.5", f"f{seed}"
        )
        for seed in (31, 32)
    )
    requests = [
        SynthesisRequest(text="你好世界", seed=1, max_len=20, adapter=a),
        SynthesisRequest(text="Hello there.", seed=2, max_len=20, adapter=b),
        SynthesisRequest(text="测试一下", seed=3, max_len=15),
        SynthesisRequest(text="abc def", seed=4, max_len=12, adapter=a),
    ]
    for request, got in zip(requests, together(batched, requests, 0.0), strict=True):
        want = alone(reference, request)
        assert got.shape == want.shape and np.abs(got - want).max() < FLOAT32_TOLERANCE, request.text
