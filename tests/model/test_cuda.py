"""The batched engine's CUDA-only paths, on a GPU (skipped without one; ``benchmarks/gpu_run.sh`` runs them).

What a CPU cannot check: the decode step captured as CUDA graphs gives the eager step's bits, the packed
prefill's one variable-length attention call per layer gives what one call per request gives, and a
batch stepping from graphs (the decode step's and the VAE decode's) gives each request its audio.
Self-contained (``pytest --noconftest``), so that it runs where the service's HTTP test dependencies
are not installed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from serve_app.config import ModelConfig
from serve_app.model import synthetic
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.batched.layers import StepInputs, StepOutput
from serve_app.model.types import SynthesisRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TIMESTEPS = SynthesisRequest.inference_timesteps


@pytest.fixture(scope="module", params=["tiny-voxcpm1.5", "tiny-voxcpm2"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchedEngine]:
    checkpoint = synthetic.build(request.param, tmp_path_factory.mktemp("cuda") / request.param, dtype="bfloat16")
    config = ModelConfig(
        source=str(checkpoint),
        device="cuda",
        engine="batched",
        max_batch_size=8,
        kv_cache_length=2048,
        warmup=False,
        cuda_graphs=True,
    )
    loaded = BatchedEngine.load(config)
    yield loaded
    loaded.close()


def _inputs(engine: BatchedEngine, rows: int) -> StepInputs:
    inputs = engine.runner.blank(rows)
    for tensor in (inputs.lm_hidden, inputs.residual_hidden, inputs.condition, inputs.noise):
        tensor.normal_()
    inputs.cfg.fill_(2.0)
    inputs.positions.copy_(torch.arange(rows) * 7 + 30)  # each row its own position
    return inputs


def _replayed(engine: BatchedEngine, inputs: StepInputs) -> StepOutput:
    rows = inputs.positions.shape[0]
    with torch.inference_mode():
        output = engine.runner.graphs.run(inputs, rows, engine.runner.span(int(inputs.positions.max()) + 1, 1024))
    assert output is not None
    return output


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_a_replayed_graph_gives_the_eager_steps_bits(engine: BatchedEngine, rows: int) -> None:
    """At the graph's own batch size (padding changes the kernels' row count, and on a GPU their rounding)."""
    runner = engine.runner
    assert runner.graphs is not None and runner.graphs.sizes == [1, 2, 4, 8]
    size = next(size for size in runner.graphs.sizes if size >= rows)
    inputs = _inputs(engine, size)
    with torch.inference_mode():  # both write the same keys and values
        eager = runner.compute(inputs, {TIMESTEPS: list(range(size))}, 1024).first(size)
    replayed = _replayed(engine, inputs)
    for name in ("latents", "stop", "lm_hidden", "residual_hidden"):
        assert torch.equal(getattr(eager, name), getattr(replayed, name)), name


def test_padding_rows_leave_the_real_rows_alone(engine: BatchedEngine) -> None:
    """Five rows in the graph of eight, its padding rows zeros, against the same five with three other rows:
    the five get the same bits (rows meet only through the KV slots, each writing its own)."""
    full = _inputs(engine, 8)
    five = StepInputs(*(getattr(full, field.name)[:5].clone() for field in dataclasses.fields(full)))
    padded, together = _replayed(engine, five), _replayed(engine, full)
    for name in ("latents", "stop", "lm_hidden", "residual_hidden"):
        assert torch.equal(getattr(padded, name), getattr(together, name)[:5]), name


def test_the_packed_prefill_attends_per_request_in_one_call(engine: BatchedEngine) -> None:
    """Three requests of different lengths prefilled together: the variable-length call per layer against a
    call per request (the CPU path) — the same up to the rounding of another kernel's summation order."""
    runner, runtime = engine.runner, engine.runtime
    assert runner.varlen_prefill
    texts = ["短句。", "A longer sentence with a few more tokens in it.", "第三个请求的文本稍微长一点。"]
    batch = []
    for text in texts:
        request = SynthesisRequest(text=text, seed=1)
        batch.append(runtime.model_inputs(next(runtime.utterance(request)), request))
    slots = [0, 1, 2]
    varlen, hidden = runner.prefill(batch, slots), runner.hidden.rows(0, 3)
    varlen_hidden = (hidden.lm_hidden.clone(), hidden.residual_hidden.clone())
    runner.varlen_prefill = False
    try:
        per_request = runner.prefill(batch, slots)
    finally:
        runner.varlen_prefill = True
    assert varlen == per_request  # the lengths
    for fast, slow in zip(varlen_hidden, (hidden.lm_hidden, hidden.residual_hidden), strict=True):
        torch.testing.assert_close(fast, slow, rtol=0.05, atol=0.05)


def test_the_graphs_passed_their_check_at_start(engine: BatchedEngine) -> None:
    """The replica's start check (``graph_check.py``) ran both ways and found them agreeing: graphs on."""
    assert engine.info.graphs == "on"


def test_a_batch_stepping_from_graphs_streams_every_request(engine: BatchedEngine) -> None:
    """Five requests at once (steps padded to the graph of eight), every stream finite and complete; then one
    request alone twice with its seed: the same audio (a graph's replay is deterministic)."""
    texts = [f"第{index}个请求。Request {index}." for index in range(5)]
    requests = [SynthesisRequest(text=text, seed=index, max_len=40) for index, text in enumerate(texts)]
    results: list[np.ndarray | None] = [None] * len(requests)

    def run(index: int) -> None:
        results[index] = engine.generate(requests[index], streaming=True)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for audio in results:
        assert audio is not None and audio.size > 0 and np.isfinite(audio).all()
    assert engine.decoder.graphs is not None
    assert np.array_equal(engine.generate(requests[0], streaming=True), engine.generate(requests[0], streaming=True))
