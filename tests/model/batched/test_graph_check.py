"""CUDA graphs guarded (``serve_app/model/batched/graph_check.py``), on CPU by emulation: the graphs' buffers and
padding computed eagerly stand in for the replay, and a replay made to differ stands in for a wrong graph. The
state each replica reports (/health's ``graphs``, the ``voxcpm_cuda_graphs_on`` metric) follows."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.model.batched import graph_check
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.batched.layers import StepOutput
from serve_app.model.cuda_graphs import PaddedGraphs
from serve_app.model.types import SynthesisRequest

REQUEST = SynthesisRequest(text="Hello there. How are you?", seed=7, max_len=30)


@pytest.fixture(scope="module")
def engine(synthetic_engine: Callable[..., Any]) -> Iterator[BatchedEngine]:
    """Exact (bfloat16, ``batch_invariant``), asked for graphs on a CPU; its graphs dropped after each test."""
    loaded = synthetic_engine(
        "tiny-voxcpm1.5",
        "batched",
        dtype="bfloat16",
        batch_invariant=True,
        max_batch_size=4,
        kv_cache_length=512,
        cuda_graphs=True,
    )
    yield loaded
    torch.backends.mkldnn.enabled = True  # batch_invariant turned it off for the process


@pytest.fixture
def eager(engine: BatchedEngine) -> Iterator[np.ndarray]:
    """The request's audio from eager steps; the engine eager again after the test."""
    yield engine.generate(REQUEST, streaming=True)
    engine.runner.graphs = engine.decoder.graphs = None


def _skewed(monkeypatch: pytest.MonkeyPatch, by: float) -> None:
    """Every replayed decode step's latents off by ``by``: a graph that is not the eager step."""
    replay = PaddedGraphs.run

    def run(self: PaddedGraphs, inputs: Any, rows: int, key: Any) -> Any:
        output = replay(self, inputs, rows, key)
        if isinstance(output, StepOutput):
            return dataclasses.replace(output, latents=output.latents + by)
        return output

    monkeypatch.setattr(PaddedGraphs, "run", run)


def test_a_replica_reports_why_it_has_no_graphs(synthetic_engine: Callable[..., Any], engine: BatchedEngine) -> None:
    assert synthetic_engine("tiny-voxcpm1.5", "batched", max_batch_size=2).info.graphs == "off: not asked for"
    assert synthetic_engine("tiny-voxcpm1.5").info.graphs == "off: not asked for"  # the reference engine
    assert engine.info.graphs == "off: no GPU"  # asked for on a CPU: nothing captured
    assert engine.runner.graphs is None and engine.decoder.graphs is None


def test_graphs_that_give_the_eager_steps_bits_are_turned_on(engine: BatchedEngine, eager: np.ndarray) -> None:
    engine._capture_graphs(capture=False)
    assert engine.info.graphs == "on"
    assert engine.runner.graphs is not None and engine.decoder.graphs is not None
    assert np.array_equal(engine.generate(REQUEST, streaming=True), eager)  # exactness unchanged


def test_a_mismatch_leaves_every_step_eager_with_one_loud_warning(
    engine: BatchedEngine, eager: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _skewed(monkeypatch, 1e-3)
    with caplog.at_level(logging.WARNING, logger=graph_check.__name__):
        engine._capture_graphs(capture=False)
    assert engine.info.graphs == "off: mismatch"
    assert engine.runner.graphs is None and engine.decoder.graphs is None
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert (
        len(warnings) == 1
        and "DISAGREE" in warnings[0].getMessage()
        and "decode step: 0.00" in warnings[0].getMessage()
    )
    assert np.array_equal(engine.generate(REQUEST, streaming=True), eager)


def test_where_the_engine_is_not_exact_its_tolerance_applies(
    engine: BatchedEngine, eager: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A difference within ``FLOAT32_TOLERANCE`` passes a non-exact engine, never an exact one."""
    _skewed(monkeypatch, graph_check.FLOAT32_TOLERANCE / 4)
    runner, decoder, frames = engine.runner, engine.decoder, engine.runtime.model.patch_size
    timesteps = SynthesisRequest.inference_timesteps
    assert graph_check.guarded(runner, decoder, timesteps, frames, exact=False, capture=False) == "on"
    assert graph_check.guarded(runner, decoder, timesteps, frames, exact=True, capture=False) == "off: mismatch"
    _skewed(monkeypatch, graph_check.FLOAT32_TOLERANCE * 4)
    assert graph_check.guarded(runner, decoder, timesteps, frames, exact=False, capture=False) == "off: mismatch"


def test_a_failed_capture_leaves_every_step_eager(
    engine: BatchedEngine, eager: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(frames: int, capture: bool) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine.decoder, "use_graphs", fail)  # after the decode step's were captured
    engine._capture_graphs(capture=False)
    assert engine.info.graphs == "off: capture failed"
    assert engine.runner.graphs is None and engine.decoder.graphs is None


def test_a_difference_is_zero_only_where_every_element_is_equal() -> None:
    ones = torch.ones(3, dtype=torch.bfloat16)
    assert graph_check.difference(ones, ones.clone()) == 0.0
    assert graph_check.difference(ones, ones + 0.5) == 0.5
    assert graph_check.difference(ones, torch.full_like(ones, float("nan"))) == float("inf")
    assert graph_check.difference(ones, torch.ones(4, dtype=torch.bfloat16)) == float("inf")


def test_states_name_the_reasons() -> None:
    assert graph_check.uncaptured(asked=False, cuda=True) == "off: not asked for"
    assert graph_check.uncaptured(asked=True, cuda=False) == "off: no GPU"
