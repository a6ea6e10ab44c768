"""The batched engine against the reference engine, in-process, on real voxcpm with synthetic checkpoints.

Each request's audio from the batched engine must be the reference engine's audio for that request
alone: bit for bit with a bfloat16 model (``batch_invariant``: PyTorch's own CPU kernels), within a
stated tolerance in float32, whatever else is in the batch and whenever it joined or others left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.errors import NotFound
from serve_app.model.batched.sequence import Sequence
from serve_app.model.coalescing import coalesced
from serve_app.model.engine import joined
from serve_app.model.types import SynthesisRequest
from tests.conftest import ADMIN, FLOAT32_TOLERANCE, wait_until
from tests.model.batched.engines import (
    DECODE_ROUNDING,
    alone,
    idle,
    mixed_requests,
    together,
)


@pytest.mark.parametrize("stagger_s", [0.0, 0.15])
def test_each_request_is_the_reference_audio_bit_for_bit(engines: tuple, stagger_s: float) -> None:
    """Six requests through four slots (so two wait, then join as others leave), joining together or
    staggered, with long text (two sentences, the first's audio as the second's prompt) and cloning."""
    reference, batched, _ = engines
    requests = mixed_requests(reference.info.prompt_sample_rate)
    expected = [alone(reference, request) for request in requests]
    for request, want, got in zip(requests, expected, together(batched, requests, stagger_s), strict=True):
        assert isinstance(got, np.ndarray), got
        assert got.shape == want.shape and np.array_equal(got, want), request.text


def test_requests_joining_together_are_prefilled_together_bit_for_bit(engines: tuple, monkeypatch) -> None:
    """Requests admitted in the same step are prefilled in one packed pass (different lengths, a
    prompt, long text): each still gets the reference audio. The first request's prefill is held
    until the others wait in the engine's inbox, so that they join together."""
    reference, batched, _ = engines
    chosen = mixed_requests(reference.info.prompt_sample_rate)
    requests = [chosen[0], chosen[1], chosen[4], chosen[5]]
    expected = [alone(reference, request) for request in requests]
    held, sizes, prefill = threading.Event(), [], batched.runner.prefill

    def holding(batch: list, slots: list, adapters: list) -> list:
        sizes.append(len(batch))
        held.wait(timeout=30)
        return prefill(batch, slots, adapters)

    monkeypatch.setattr(batched.runner, "prefill", holding)
    results: list[np.ndarray | None] = [None] * len(requests)

    def run(index: int) -> None:
        results[index] = batched.generate(requests[index], streaming=True)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    threads[0].start()
    while not sizes:
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    assert wait_until(lambda: batched._inbox.qsize() == len(threads) - 1, 30)  # the others wait in the inbox
    held.set()
    for thread in threads:
        thread.join()
    assert sizes[:2] == [1, 3]
    for want, got in zip(expected, results, strict=True):
        assert got is not None and np.array_equal(got, want)
    assert idle(batched)


def test_steps_as_cuda_graphs_run_them_give_the_reference_audio_bit_for_bit(engines: tuple, monkeypatch) -> None:
    """The decode step and the streams' one-patch VAE decode as their CUDA graphs run them (on CPU the graphs' static
    buffers computed eagerly: rows padded to the captured batch sizes, padding rows writing free slots, the
    graphs' span), with the steps of a batch that mixes ``inference_timesteps`` or streaming and
    non-streaming requests run eagerly in between: each request still gets the reference audio, and most
    steps came from the graphs."""
    reference, batched, _ = engines
    requests = mixed_requests(reference.info.prompt_sample_rate)
    expected = [alone(reference, request) for request in requests]
    runner, decoder = batched.runner, batched.decoder
    monkeypatch.setattr(runner, "graphs", None)  # restored after the test
    monkeypatch.setattr(decoder, "graphs", None)
    runner.use_graphs(SynthesisRequest.inference_timesteps, capture=False)
    decoder.use_graphs(batched.runtime.model.patch_size, capture=False)
    assert runner.graphs is not None and runner.graphs.sizes == [1, 2, 4]
    assert decoder.graphs is not None
    calls: dict[str, list] = {"step": [], "run": [], "decode": []}

    def counted(name: str, method: Callable) -> Callable:
        def call(*arguments: object, **options: object) -> object:
            calls[name].append(output := method(*arguments, **options))
            return output

        return call

    monkeypatch.setattr(runner, "step", counted("step", runner.step))
    monkeypatch.setattr(runner.graphs, "run", counted("run", runner.graphs.run))
    monkeypatch.setattr(decoder.graphs, "run", counted("decode", decoder.graphs.run))
    streaming = [True, True, True, False, True, True]  # one non-streaming request: its steps decode eagerly
    expected[3] = joined(reference.generate(requests[3], streaming=False))
    for request, want, got in zip(requests, expected, together(batched, requests, 0.05, streaming), strict=True):
        assert isinstance(got, np.ndarray), got
        if request is requests[3]:
            assert got.shape == want.shape and np.abs(got - want).max() < DECODE_ROUNDING
        else:
            assert got.shape == want.shape and np.array_equal(got, want), request.text
    replayed = [output.latents.shape[0] for output in calls["run"] if output is not None]
    assert 0 < len(calls["step"]) - len(replayed) < len(replayed)  # some steps eager (mixed timesteps), most not
    assert 3 in replayed  # three rows padded to the graph of four
    # a step whose streams' calls each take one patch (their first) is the decode graph's: two streams let in at
    # once (the staggered ones above meet it only where the machine's speed lines their first patches up)
    opened = threading.Event()
    pair = [requests[0], requests[1]]
    threading.Timer(0.2, opened.set).start()
    for request, want, got in zip(pair, expected[:2], together(batched, pair, 0.0, gate=(0, opened)), strict=True):
        assert np.array_equal(got, want), request.text
    decoded = [output.samples.shape[0] for output in calls["decode"] if output is not None]
    assert decoded
    assert idle(batched)


def test_a_cancelled_request_leaves_the_others_exact(engines: tuple) -> None:
    reference, batched, _ = engines
    requests = mixed_requests(reference.info.prompt_sample_rate)[:3]
    expected = [alone(reference, request) for request in requests]

    async def scenario() -> list[np.ndarray]:
        async def consume(request: SynthesisRequest, stop_after: int | None) -> np.ndarray:
            chunks = []
            stream = batched.stream(request, lambda: None)
            async for chunk in stream:
                chunks.append(chunk)
                if stop_after is not None and len(chunks) == stop_after:
                    await stream.aclose()  # the client went away mid-generation
                    break
            return joined(chunks)

        long = SynthesisRequest(text="这个请求会在中途被取消。" * 3, seed=9, max_len=200)
        return await asyncio.gather(consume(long, stop_after=5), *(consume(request, None) for request in requests))

    cancelled, *results = asyncio.run(scenario())
    assert len(cancelled) > 0
    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    assert idle(batched)


def test_a_failing_request_fails_alone(engines: tuple) -> None:
    """A saved voice deleted under a request: that request gets NotFound, the batch goes on exact."""
    reference, batched, voices = engines
    rate = reference.info.prompt_sample_rate
    voice = voices.create(ADMIN, "gone", "参考", np.zeros(rate, dtype=np.float32), rate)
    voices.delete(voice.voice_id, ADMIN)
    requests = mixed_requests(rate)[:3]
    expected = [alone(reference, request) for request in requests]
    failing = SynthesisRequest(text="你好", voice=voice, seed=1, max_len=5)
    results = together(batched, [requests[0], failing, *requests[1:]], stagger_s=0.05)
    assert isinstance(results[1], NotFound) and results[1].field == "voice_id"
    for want, got in zip(expected, [results[0], *results[2:]], strict=True):
        assert np.array_equal(got, want)
    assert idle(batched)


def test_non_streaming_sentences_match_the_reference_within_decode_rounding(engines: tuple) -> None:
    """/api/tts: voxcpm decodes each sentence whole; the batched engine decodes patch by patch (the
    same causal convolutions): equal up to float32 rounding, with the same retry_badcase behaviour."""
    reference, batched, _ = engines
    request = SynthesisRequest(text="你好世界。再来一句。", seed=3, max_len=60, retry_badcase=True)
    want = joined(reference.generate(request, streaming=False))
    got = batched.generate(request, streaming=False)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < DECODE_ROUNDING


def test_streams_and_non_streaming_requests_in_one_batch(engines: tuple) -> None:
    """Non-streaming requests decode their patches 16 at a time, apart from the streams in the same batch:
    the streams stay bit for bit, the others within decode rounding of voxcpm's whole-sentence decode."""
    reference, batched, _ = engines
    requests = [
        dataclasses.replace(request, retry_badcase=False)
        for request in mixed_requests(reference.info.prompt_sample_rate)
    ]
    modes = [index % 2 == 0 for index in range(len(requests))]
    results = together(batched, requests, 0.0, modes)
    for request, streamed, got in zip(requests, modes, results, strict=True):
        assert isinstance(got, np.ndarray), got
        if streamed:
            assert np.array_equal(got, alone(reference, request)), request.text
        else:
            want = joined(reference.generate(request, streaming=False))
            assert got.shape == want.shape and np.abs(got - want).max() < DECODE_ROUNDING, request.text
    assert idle(batched)


def test_a_coalesced_stream_is_the_reference_audio_in_fewer_pieces(engines: tuple) -> None:
    """A stream whose chunks are joined while its listener is ahead (``coalescing.py``, as the model
    deployment sends them with ``stream_coalesce_lead_s``) carries the same audio bit for bit."""
    reference, batched, _ = engines
    request = SynthesisRequest(text="Hello there. How are you today?", seed=2, max_len=70)

    def slow_listener() -> float:  # a clock a hundred times slower: the listener's lead builds on any CPU
        return time.monotonic() / 100

    async def received(lead_s: float) -> list[np.ndarray]:
        chunks = batched.stream(request, lambda: None)
        return [piece async for piece in coalesced(chunks, batched.info.sample_rate, lead_s, 0.2, slow_listener)]

    steps, pieces = asyncio.run(received(0.0)), asyncio.run(received(0.05))
    assert np.array_equal(joined(pieces), alone(reference, request))
    assert np.array_equal(joined(steps), joined(pieces))
    assert 1 < len(pieces) < len(steps)
    assert idle(batched)


def test_float32_matches_within_tolerance(
    synthetic_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 matrix products are not batch-invariant on CPU (1e-7 per product): the drift stays small, also
    where a batch grows busy (more than ``GROUPED_STREAMS`` streams) and the streams decode what they held
    back, then a patch per step together."""
    reference = synthetic_engine("tiny-voxcpm1.5")  # the tiny presets' own dtype: float32
    batched = synthetic_engine("tiny-voxcpm1.5", "batched", max_batch_size=6, kv_cache_length=512)
    flushed: list[int] = []  # held patches decoded at once because the batch grew busy
    holding = threading.Event()  # a stream in calls of 8 holds its first: it will hold for 6 more steps
    decode = batched.vae.decode_new

    def watched(running: list[Sequence], latents: torch.Tensor, *placement: Any) -> tuple:
        audio, due = decode(running, latents, *placement)
        # held patches due before their group is full: the batch grew busy, and they go now
        flushed.extend(
            len(running[row].latents) for row in due if not running[row].grouping.due(len(running[row].latents))
        )
        held = any(sequence.grouping.group() == 8 and len(sequence.latents) == 1 for sequence in running)
        if held and not holding.is_set():
            holding.set()
            # the engine's next step waits for the two newcomers to be queued, so they join while it still holds
            assert wait_until(lambda: batched._inbox.qsize() >= 2, 30), "the newcomers were never queued"
        return audio, due

    monkeypatch.setattr(batched.vae, "decode_new", watched)
    try:
        # four streams, then two more while one of them holds patches: five make the batch busy; no sentence
        # may end before the holder's group of 8 could (min_len), so the holder still holds when they join
        requests = [
            dataclasses.replace(r, min_len=80, max_len=200) for r in mixed_requests(reference.info.prompt_sample_rate)
        ]
        expected = [alone(reference, request) for request in requests]
        for want, got in zip(expected, together(batched, requests, 0.02, gate=(4, holding)), strict=True):
            assert got.shape == want.shape
            assert np.abs(got - want).max() < FLOAT32_TOLERANCE
        assert any(size > 1 for size in flushed)
    finally:
        batched.close()
        reference.close()
