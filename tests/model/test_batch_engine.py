"""The batched engine against the reference engine, in-process, on real voxcpm with synthetic checkpoints.

Each request's audio from the batched engine must be the reference engine's audio for that request
alone: bit for bit with a bfloat16 model (``batch_invariant``: PyTorch's own CPU kernels), within a
stated tolerance in float32, whatever else is in the batch and whenever it joined or others left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.errors import NotFound
from serve_app.model.batched import batch_engine, layers, scheduler
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.batched.kv_slots import KVSlots
from serve_app.model.batched.postprocess import Postprocessor
from serve_app.model.batched.scheduler import Scheduler
from serve_app.model.batched.sequence import Sequence, Status
from serve_app.model.coalescing import coalesced
from serve_app.model.cuda_graphs import PaddedGraphs
from serve_app.model.decode_grouping import GROUPED_STREAMS, DecodeGrouping
from serve_app.model.engine import joined
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import PromptAudio, SynthesisRequest
from serve_app.store.voice_store import VoiceStore
from tests.conftest import ADMIN, FLOAT32_TOLERANCE, wait_until

PRESETS = ["tiny-voxcpm1.5", "tiny-voxcpm2"]
DECODE_ROUNDING = 1e-5  # a sentence decoded patch by patch against voxcpm's whole-sentence decode


def _requests(prompt_rate: int) -> list[SynthesisRequest]:
    """Mixed parameters: each its own text, seed, cfg_value, inference_timesteps, min_len, max_len."""
    prompt = PromptAudio(np.sin(np.arange(prompt_rate) / 9).astype(np.float32) * 0.3, prompt_rate, "参考音频")
    return [
        SynthesisRequest(text="你好世界", seed=1, max_len=20),
        SynthesisRequest(text="Hello there. How are you today?", seed=2, cfg_value=1.7, max_len=70),
        SynthesisRequest(text="测试一下", seed=3, inference_timesteps=3, max_len=15),
        SynthesisRequest(text="abc def", seed=4, min_len=5, max_len=12),
        SynthesisRequest(text="第五个请求。第二句。", seed=5, max_len=80),
        SynthesisRequest(text="克隆的声音", seed=6, prompt=prompt, max_len=18),
    ]


@pytest.fixture(scope="module", params=PRESETS)
def engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic_engine: Callable[..., Any]
) -> Iterator[tuple]:
    voices = VoiceStore(tmp_path_factory.mktemp("voices"))
    common = dict(dtype="bfloat16", voices=voices, batch_invariant=True)
    reference = synthetic_engine(request.param, **common)
    batched = synthetic_engine(
        request.param, "batched", max_batch_size=4, kv_cache_length=512, first_step_alone=True, **common
    )  # first_step_alone (off by default) so that every exactness test also joins newcomers that way
    yield reference, batched, voices
    batched.close()
    reference.close()
    torch.backends.mkldnn.enabled = True  # batch_invariant turned it off for the process


def _alone(reference: ReferenceEngine, request: SynthesisRequest) -> np.ndarray:
    return joined(reference.generate(request, streaming=True))


def _together(
    batched: BatchedEngine,
    requests: list[SynthesisRequest],
    stagger_s: float,
    streaming: list[bool] | None = None,
    gate: tuple[int, threading.Event] | None = None,
) -> list[np.ndarray]:
    """Each request from its own thread, the i-th joining ``i * stagger_s`` after the first (streamed, or
    as the non-streaming API asks where ``streaming`` says so); with ``gate`` (n, event), those from the
    n-th on join once the event is set instead."""
    results: list[np.ndarray | BaseException | None] = [None] * len(requests)
    modes = streaming or [True] * len(requests)

    def run(index: int) -> None:
        try:  # a failure here, the gate's too, is the request's result: compared by the test, never lost
            if gate is not None and index >= gate[0]:
                assert gate[1].wait(timeout=30), "the gate never opened"
            else:
                time.sleep(index * stagger_s)
            results[index] = batched.generate(requests[index], streaming=modes[index])
        except BaseException as exc:  # noqa: BLE001 - compared by the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]


def _counted_steps(batched: BatchedEngine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rows, first slot) of every step the engine runs from now on."""
    steps: list[tuple[int, int]] = []
    step = batched.runner.step

    def counted(rows: list, first: int = 0) -> object:
        steps.append((len(rows), first))
        return step(rows, first)

    monkeypatch.setattr(batched.runner, "step", counted)
    return steps


TWO_RUNNING_AND_A_NEWCOMER = [  # staggered by 0.1 s: the third joins while the first two speak
    SynthesisRequest(text="一个正在说话的长句子，还要说很久。", seed=11, max_len=60),
    SynthesisRequest(text="另一个正在说话的长句子，也要说很久。", seed=13, max_len=60),
    SynthesisRequest(text="新来的", seed=12, max_len=8),
]


def test_a_request_joining_a_running_batch_gets_its_first_step_alone(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """first_step_alone: the newcomer's first patch comes from a step over its own slot right after its
    prefill, not from the batch's next step; its audio is still the reference's bit for bit."""
    reference, batched, _ = engines
    monkeypatch.setattr(batched, "_patch_s", math.inf)  # time to spare, however slow this machine's steps
    steps = _counted_steps(batched, monkeypatch)
    requests = TWO_RUNNING_AND_A_NEWCOMER
    results = _together(batched, requests, stagger_s=0.1)
    assert (1, 2) in steps  # one row, in slot 2: the newcomer alone, while the others held slots 0 and 1
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, _alone(reference, request))


@pytest.mark.parametrize("short_of", ["room", "time"])
def test_newcomers_join_the_next_step_of_a_batch_without_room_or_time_to_spare(
    engines: tuple, monkeypatch: pytest.MonkeyPatch, short_of: str
) -> None:
    """Newcomers go first only while the batch has slots to spare (here: at most a quarter of its 4 held, so
    2 running are too many) and time (here: patches of no audio, so every step takes longer than one)."""
    reference, batched, _ = engines
    if short_of == "room":
        monkeypatch.setattr(scheduler, "NEWCOMERS_FIRST_OCCUPANCY", 0.25)
    else:
        monkeypatch.setattr(batched, "_patch_s", 0.0)
    steps = _counted_steps(batched, monkeypatch)
    requests = TWO_RUNNING_AND_A_NEWCOMER
    results = _together(batched, requests, stagger_s=0.1)
    assert (1, 2) not in steps and (3, 0) in steps  # the newcomer's first step was the batch's
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, _alone(reference, request))


def test_newcomers_as_many_as_the_batch_join_its_next_step(engines: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the newcomers are more than half as many as the streams running, a step of their own would cost
    about the batch's: they join its next step."""
    reference, batched, _ = engines
    steps = _counted_steps(batched, monkeypatch)
    requests = [
        SynthesisRequest(text="一个正在说话的长句子，还要说很久。", seed=11, max_len=60),
        SynthesisRequest(text="新来的", seed=12, max_len=8),
    ]
    results = _together(batched, requests, stagger_s=0.1)
    assert all(first == 0 for _, first in steps) and (2, 0) in steps
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, _alone(reference, request))


def test_a_stream_arriving_during_the_batch_model_call_is_heard_before_the_batch_vae_call(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newcomers first: a stream that arrives while the batch's model call runs is admitted, prefilled and
    given its first step and its audio before that step's VAE call. A cancellation that arrives then waits
    for the step's end (the batch's rows keep their slots until its VAE call): the others are still the
    reference's bit for bit."""
    reference, batched, _ = engines
    monkeypatch.setattr(batched, "_patch_s", math.inf)  # time to spare, however slow this machine's steps
    leaving = SynthesisRequest(text="一个很快就被取消的长句子，还要说很久。", seed=21, max_len=40)
    staying = SynthesisRequest(text="一个正在说话的长句子，也要说很久。", seed=22, max_len=40)
    newcomer = SynthesisRequest(text="新来的", seed=23, max_len=8)
    results: dict[int, np.ndarray] = {}
    threads: list[threading.Thread] = []
    events: list[str] = []
    step, decode = batched.runner.step, batched.postprocessor.decode

    def send(request: SynthesisRequest) -> None:
        """From a thread of its own, as a caller does; back once the engine has it in its inbox or running."""
        count = len(batched.scheduler.running)

        def run() -> None:
            results[request.seed] = batched.generate(request, streaming=True)  # type: ignore[index]

        threads.append(thread := threading.Thread(target=run))
        thread.start()
        deadline = time.monotonic() + 10
        while batched._inbox.empty() and len(batched.scheduler.running) == count and time.monotonic() < deadline:
            time.sleep(0.001)

    def stepped(rows: list, first: int = 0) -> object:
        output = step(rows, first)
        if events or (first == 0 and len(rows) == 2):  # both streams run: record from here
            events.append(f"model call: {len(rows)} rows from slot {first}")
        if events == ["model call: 2 rows from slot 0"]:  # meanwhile the first one leaves, a third arrives
            send(newcomer)
            gone = batched.scheduler.running[0]
            gone.cancelled = True
            batched._inbox.put(("cancel", gone))
            gone.deliver(batch_engine._END)  # what its consumer sees as it closes
        return output

    def decoded(rows: list, latents: torch.Tensor, *placement: Any) -> tuple:
        if events:
            events.append(f"VAE call: {len(rows)} rows")
        return decode(rows, latents, *placement)

    monkeypatch.setattr(batched.runner, "step", stepped)
    monkeypatch.setattr(batched.postprocessor, "decode", decoded)
    send(leaving)
    send(staying)
    while len(threads) < 3 or any(thread.is_alive() for thread in threads):
        time.sleep(0.01)
    assert events[:6] == [
        "model call: 2 rows from slot 0",  # the batch's model call, during which the newcomer arrives
        "model call: 1 rows from slot 2",  # the newcomer's first step, alone, in slot 2 (the cancelled one holds 0)
        "VAE call: 1 rows",  # its first audio
        "VAE call: 2 rows",  # then the batch's
        "model call: 2 rows from slot 0",  # the cancellation taken: the newcomer moved into slot 0
        "VAE call: 2 rows",
    ], events[:8]
    assert np.array_equal(results[staying.seed], _alone(reference, staying))  # type: ignore[index]
    assert np.array_equal(results[newcomer.seed], _alone(reference, newcomer))  # type: ignore[index]


@pytest.mark.parametrize("stagger_s", [0.0, 0.15])
def test_each_request_is_the_reference_audio_bit_for_bit(engines: tuple, stagger_s: float) -> None:
    """Six requests through four slots (so two wait, then join as others leave), joining together or
    staggered, with long text (two sentences, the first's audio as the second's prompt) and cloning."""
    reference, batched, _ = engines
    requests = _requests(reference.info.prompt_sample_rate)
    expected = [_alone(reference, request) for request in requests]
    for request, want, got in zip(requests, expected, _together(batched, requests, stagger_s), strict=True):
        assert isinstance(got, np.ndarray), got
        assert got.shape == want.shape and np.array_equal(got, want), request.text


def test_requests_joining_together_are_prefilled_together_bit_for_bit(engines: tuple, monkeypatch) -> None:
    """Requests admitted in the same step are prefilled in one packed pass (different lengths, a
    prompt, long text): each still gets the reference audio. The first request's prefill is held
    until the others wait in the engine's inbox, so that they join together."""
    reference, batched, _ = engines
    chosen = _requests(reference.info.prompt_sample_rate)
    requests = [chosen[0], chosen[1], chosen[4], chosen[5]]
    expected = [_alone(reference, request) for request in requests]
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
    time.sleep(0.3)
    held.set()
    for thread in threads:
        thread.join()
    assert sizes[:2] == [1, 3]
    for want, got in zip(expected, results, strict=True):
        assert got is not None and np.array_equal(got, want)
    assert _idle(batched)


def test_steps_as_cuda_graphs_run_them_give_the_reference_audio_bit_for_bit(engines: tuple, monkeypatch) -> None:
    """The decode step and the streams' one-patch VAE decode as their CUDA graphs run them (on CPU the graphs' static
    buffers computed eagerly: rows padded to the captured batch sizes, padding rows writing free slots, the
    graphs' span), with the steps of a batch that mixes ``inference_timesteps`` or streaming and
    non-streaming requests run eagerly in between: each request still gets the reference audio, and most
    steps came from the graphs."""
    reference, batched, _ = engines
    requests = _requests(reference.info.prompt_sample_rate)
    expected = [_alone(reference, request) for request in requests]
    runner, decoder = batched.runner, batched.decoder
    monkeypatch.setattr(runner, "graphs", None)  # restored after the test
    monkeypatch.setattr(decoder, "graphs", None)
    runner.use_graphs(SynthesisRequest.inference_timesteps, capture=False)
    decoder.use_graphs(batched.runtime.model.patch_size, capture=False)
    assert runner.graphs is not None and runner.graphs.sizes == [1, 2, 4]
    assert decoder.graphs is not None
    calls: dict[str, list] = {"step": [], "run": [], "decode": []}

    def counted(name: str, method: Callable) -> Callable:
        def call(*arguments: object) -> object:
            calls[name].append(output := method(*arguments))
            return output

        return call

    monkeypatch.setattr(runner, "step", counted("step", runner.step))
    monkeypatch.setattr(runner.graphs, "run", counted("run", runner.graphs.run))
    monkeypatch.setattr(decoder.graphs, "run", counted("decode", decoder.graphs.run))
    streaming = [True, True, True, False, True, True]  # one non-streaming request: its steps decode eagerly
    expected[3] = joined(reference.generate(requests[3], streaming=False))
    for request, want, got in zip(requests, expected, _together(batched, requests, 0.05, streaming), strict=True):
        assert isinstance(got, np.ndarray), got
        if request is requests[3]:
            assert got.shape == want.shape and np.abs(got - want).max() < DECODE_ROUNDING
        else:
            assert got.shape == want.shape and np.array_equal(got, want), request.text
    replayed = [output.latents.shape[0] for output in calls["run"] if output is not None]
    assert 0 < len(calls["step"]) - len(replayed) < len(replayed)  # some steps eager (mixed timesteps), most not
    assert 3 in replayed  # three rows padded to the graph of four
    decoded = [output.samples.shape[0] for output in calls["decode"] if output is not None]
    assert decoded  # a step whose streams' calls each take one patch (their first): the graph's
    assert _idle(batched)


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
    caches = runner.base_kv.cache.clone(), runner.residual_kv.cache.clone()
    monkeypatch.setattr(layers, "varlen_attn", stand_in)
    monkeypatch.setattr(runner, "varlen_prefill", True)
    packed = runner.prefill(batch, [0, 1, 2])
    for one, other in zip(per_request, packed, strict=True):
        assert one.length == other.length and torch.equal(one.lm_hidden, other.lm_hidden)
        assert torch.equal(one.residual_hidden, other.residual_hidden)
    assert torch.equal(caches[0], runner.base_kv.cache) and torch.equal(caches[1], runner.residual_kv.cache)
    assert runner.varlen_agrees()
    monkeypatch.setattr(layers, "varlen_attn", functools.partial(stand_in, causal=False))
    assert not runner.varlen_agrees()
    monkeypatch.setattr(layers, "varlen_attn", failing)
    assert not runner.varlen_agrees()


def test_graphs_are_captured_for_a_few_batch_sizes_and_a_call_takes_the_smallest_that_holds_it() -> None:
    """nano-vllm's sizes (1, 2, 4, 8, every 16, the slots); a call copies its rows into the graph's buffers and
    zeroes the padding; one the graphs cannot hold (too many rows, another key) is left to the eager path."""
    seen = []

    @dataclasses.dataclass
    class Rows:
        values: torch.Tensor

        def first(self, rows: int) -> Rows:
            return Rows(self.values[:rows].clone())

    def compute(inputs: Rows, key: int) -> Rows:
        seen.append((inputs.values.clone(), key))
        return Rows(inputs.values * key)

    graphs = PaddedGraphs("test", compute, lambda rows: Rows(torch.full((rows,), 9.0)), 96, [1, 2], capture=False)
    assert graphs.sizes == [1, 2, 4, 8, 16, 32, 48, 64, 80, 96] and graphs.captured == 10 * 2
    assert PaddedGraphs("test", compute, lambda rows: Rows(torch.zeros(rows)), 20, [1], capture=False).sizes == [
        *(1, 2, 4, 8, 16, 20)
    ]
    output = graphs.run(Rows(torch.tensor([1.0, 2.0, 3.0])), 3, 2)
    assert output is not None and output.values.tolist() == [2.0, 4.0, 6.0]
    assert seen[-1][0].tolist() == [1.0, 2.0, 3.0, 0.0] and seen[-1][1] == 2  # padded to 4 with zeros
    assert graphs.run(Rows(torch.ones(97)), 97, 1) is None and graphs.run(Rows(torch.ones(3)), 3, 5) is None


def test_a_cancelled_request_leaves_the_others_exact(engines: tuple) -> None:
    reference, batched, _ = engines
    requests = _requests(reference.info.prompt_sample_rate)[:3]
    expected = [_alone(reference, request) for request in requests]

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
    assert _idle(batched)


def test_a_failing_request_fails_alone(engines: tuple) -> None:
    """A saved voice deleted under a request: that request gets NotFound, the batch goes on exact."""
    reference, batched, voices = engines
    rate = reference.info.prompt_sample_rate
    voice = voices.create(ADMIN, "gone", "参考", np.zeros(rate, dtype=np.float32), rate)
    voices.delete(voice.voice_id, ADMIN)
    requests = _requests(rate)[:3]
    expected = [_alone(reference, request) for request in requests]
    failing = SynthesisRequest(text="你好", voice=voice, seed=1, max_len=5)
    results = _together(batched, [requests[0], failing, *requests[1:]], stagger_s=0.05)
    assert isinstance(results[1], NotFound) and results[1].field == "voice_id"
    for want, got in zip(expected, [results[0], *results[2:]], strict=True):
        assert np.array_equal(got, want)
    assert _idle(batched)


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
        dataclasses.replace(request, retry_badcase=False) for request in _requests(reference.info.prompt_sample_rate)
    ]
    modes = [index % 2 == 0 for index in range(len(requests))]
    results = _together(batched, requests, 0.0, modes)
    for request, streamed, got in zip(requests, modes, results, strict=True):
        assert isinstance(got, np.ndarray), got
        if streamed:
            assert np.array_equal(got, _alone(reference, request)), request.text
        else:
            want = joined(reference.generate(request, streaming=False))
            assert got.shape == want.shape and np.abs(got - want).max() < DECODE_ROUNDING, request.text
    assert _idle(batched)


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
    assert np.array_equal(joined(pieces), _alone(reference, request))
    assert np.array_equal(joined(steps), joined(pieces))
    assert 1 < len(pieces) < len(steps)
    assert _idle(batched)


def _idle(engine: BatchedEngine) -> bool:
    """No request left in a slot or the queue (the loop thread retires them between steps)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not engine.scheduler:
            return True
        time.sleep(0.01)
    return False


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
    decode, decode_group = batched.postprocessor.decode, batched.postprocessor.decode_group

    def watched(running: list[Sequence], latents: torch.Tensor, *placement: Any) -> tuple:
        decoded = decode(running, latents, *placement)
        held = any(sequence.grouping.group() == 8 and len(sequence.latents) == 1 for sequence in running)
        if held and not holding.is_set():
            holding.set()
            # the engine's next step waits for the two newcomers to be queued, so they join while it still holds
            assert wait_until(lambda: batched._inbox.qsize() >= 2, 30), "the newcomers were never queued"
        return decoded

    def recorded(sequence: Sequence, size: int | None = None) -> np.ndarray:
        if size is not None:
            flushed.append(size)
        return decode_group(sequence, size)

    monkeypatch.setattr(batched.postprocessor, "decode", watched)
    monkeypatch.setattr(batched.postprocessor, "decode_group", recorded)
    try:
        # four streams, then two more while one of them holds patches: five make the batch busy; no sentence
        # may end before the holder's group of 8 could (min_len), so the holder still holds when they join
        requests = [
            dataclasses.replace(r, min_len=80, max_len=200) for r in _requests(reference.info.prompt_sample_rate)
        ]
        expected = [_alone(reference, request) for request in requests]
        for want, got in zip(expected, _together(batched, requests, 0.02, gate=(4, holding)), strict=True):
            assert got.shape == want.shape
            assert np.abs(got - want).max() < FLOAT32_TOLERANCE
        assert any(size > 1 for size in flushed)
    finally:
        batched.close()
        reference.close()


def _sequence(name: str) -> Sequence:
    grouping = DecodeGrouping(16, streaming=True)
    return Sequence(SynthesisRequest(text=name), lambda: None, lambda _: None, None, None, grouping)  # type: ignore[arg-type]


def test_scheduler_admits_in_order_within_the_batch_and_keeps_slots_contiguous() -> None:
    scheduler = Scheduler(max_batch_size=3)
    a, b, c, d = (_sequence(name) for name in "abcd")
    for sequence in (a, b, c, d):
        scheduler.add(sequence)
    assert scheduler.admit() == [a, b, c] and [s.slot for s in (a, b, c)] == [0, 1, 2]
    assert d.status is Status.WAITING and scheduler.admit() == []
    assert scheduler.retire(a) == (2, 0)  # the last request moves into the freed slot
    assert scheduler.running == [c, b] and (c.slot, b.slot) == (0, 1) and a.status is Status.FINISHED
    assert scheduler.admit() == [d] and d.slot == 2
    assert scheduler.retire(d) is None  # the last one leaves: nothing moves
    assert scheduler.retire(d) is None  # twice: nothing happens
    waiting = _sequence("e")
    scheduler.add(waiting)
    assert scheduler.retire(waiting) is None and not scheduler.waiting


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


def test_a_step_decodes_single_patches_together_and_hands_back_due_groups() -> None:
    """``Postprocessor.decode``: the streams whose calls take one patch go through the VAE together; a stream
    holding patches keeps the new one and is handed back once its group is due; a busy step (more than
    ``GROUPED_STREAMS`` streams) hands back every stream that holds any, to decode them all at once."""
    calls: list[list[int]] = []

    def decode(latents: torch.Tensor, slots: list[int]) -> torch.Tensor:
        calls.append(list(slots))
        return torch.zeros(latents.shape[0], 4)

    decoder = SimpleNamespace(
        decode=decode,
        decode_batch=lambda latents: decode(latents, list(range(len(latents)))),
        decode_patches=lambda patches, slot: decode(torch.cat(patches, dim=-1), [slot])[0].numpy(),
    )
    post = Postprocessor(SimpleNamespace(batch_invariant=False), decoder)  # type: ignore[arg-type]

    def stream(slot: int, sent: int, held: int) -> Sequence:
        sequence = _sequence(f"s{slot}")
        sequence.slot, sequence.grouping.sent = slot, sent
        sequence.latents = [torch.zeros(1, 2, 1)] * held
        return sequence

    running = [stream(0, sent=3, held=0), stream(1, sent=0, held=0), stream(2, sent=8, held=1)]
    now, grouped = post.decode(running, torch.zeros(3, 2, 1))
    assert calls == [[0, 1]] and list(now) == [0, 1] and grouped == {2: None}  # 8 sent: groups of 2
    post.decode_group(running[2], grouped[2])
    assert calls[-1] == [2] and running[2].latents == [] and running[2].grouping.sent == 10

    busy = [stream(slot, sent=40, held=slot % 3) for slot in range(GROUPED_STREAMS + 1)]
    now, grouped = post.decode(busy, torch.zeros(len(busy), 2, 1))
    assert grouped == {1: 2, 2: 3, 4: 2}  # all they held, and the new patch, now
    assert list(now) == [0, 3] and calls[-1] == [0, 3]  # those holding nothing: a patch, together
