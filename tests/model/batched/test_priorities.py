"""Live requests before a job's, in the real batched engine: background requests are admitted only into what live
ones leave, give their slots up at a sentence's end while live ones wait, resume later, and every request's audio
is still the one the reference engine gives it alone."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import numpy as np
import pytest

from serve_app.model.batched import scheduler
from serve_app.model.types import PromptAudio, SynthesisRequest
from tests.model.batched.engines import alone, counted_steps, idle, together

JOBS = [  # several short sentences each: boundaries to give a slot up at
    SynthesisRequest(text="第一句。第二句。第三句。第四句。", seed=21, max_len=120, priority="background"),
    SynthesisRequest(
        text="Job two. It has sentences. Four of them. The end.", seed=22, max_len=120, priority="background"
    ),
]
LIVE = [  # long enough to hold their slots while the jobs reach a sentence's end
    SynthesisRequest(text="一个正在说话的长句子，还要说很久。", seed=31, min_len=40, max_len=50),
    SynthesisRequest(text="另一个正在说话的长句子，也要说很久。", seed=32, min_len=40, max_len=50),
    SynthesisRequest(text="第三个实时请求，说得也很长。", seed=33, min_len=40, max_len=50),
    SynthesisRequest(text="第四个实时请求，同样很长。", seed=34, min_len=40, max_len=50),
]


def test_live_requests_take_the_slots_jobs_give_up_and_nothing_sounds_different(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, batched, _ = engines
    requests = [*JOBS, *LIVE]
    expected = [alone(reference, request) for request in requests]
    admitted: list[str] = []
    admit = batched.scheduler.admit

    def logged() -> list:
        sequences = admit()
        admitted.extend(sequence.request.priority[0] + str(requests.index(sequence.request)) for sequence in sequences)
        return sequences

    monkeypatch.setattr(batched.scheduler, "admit", logged)
    _, jobs_running = counted_steps(batched, monkeypatch, running=2)
    results = together(batched, requests, stagger_s=0, gate=(2, jobs_running))  # the live ones join the jobs

    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    assert sorted(admitted[:2]) == ["b0", "b1"]  # the jobs alone at first
    resumed = [index for index, name in enumerate(admitted) if name.startswith("b") and index >= 2]
    assert resumed, f"no job gave its slot up: {admitted}"  # 4 live requests in 4 slots: both jobs waited
    last_live = max(index for index, name in enumerate(admitted) if name.startswith("i"))
    assert min(resumed) > last_live, admitted  # no job came back while a live request waited
    assert idle(batched)


def test_background_rows_skip_steps_while_the_live_ones_need_the_time(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no step-time budget at all for background work, the jobs' rows are left out of every step while live
    requests run (below them in the slots), go on once the live ones are done, and sound as they would alone."""
    reference, batched, _ = engines
    monkeypatch.setattr(scheduler, "LIVE_STEP_SHARE", 0.0)
    requests = [*JOBS, *LIVE[:2]]
    expected = [alone(reference, request) for request in requests]
    _, jobs_running = counted_steps(batched, monkeypatch, running=2)
    step, paused = batched.runner.step, []

    def logged(rows: list, first: int = 0, **options: int) -> object:
        running = batched.scheduler.running
        if first == 0 and len(rows) < len(running):
            paused.append([sequence.request.priority for sequence in running[len(rows) :]])
        return step(rows, first, **options)

    monkeypatch.setattr(batched.runner, "step", logged)
    results = together(batched, requests, stagger_s=0, gate=(2, jobs_running))

    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    assert paused and all(left == ["background", "background"] for left in paused), paused  # the jobs' rows, left out
    assert idle(batched)


def test_a_step_that_leaves_background_rows_out_pads_no_graph_over_their_slots(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three live rows below a background one, steps from CUDA graphs (emulated on CPU): the graph for four rows
    would pad into the background row's slot, so those steps run eagerly, and every request stays exact."""
    reference, batched, _ = engines
    monkeypatch.setattr(scheduler, "LIVE_STEP_SHARE", 0.0)
    monkeypatch.setattr(batched.runner, "graphs", None)  # restored after the test
    batched.runner.use_graphs(SynthesisRequest.inference_timesteps, capture=False)
    requests = [JOBS[0], *LIVE[:3]]
    expected = [alone(reference, request) for request in requests]
    _, job_running = counted_steps(batched, monkeypatch, running=1)
    results = together(batched, requests, stagger_s=0, gate=(1, job_running))
    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    assert idle(batched)


def test_a_jobs_sentence_end_waits_out_of_the_steps_while_live_ones_run_and_sounds_the_same(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs, not streamed, whose sentence ends while live streams run, with no background decode allowed in a
    step (``BACKGROUND_HELD_DECODES`` 0; the step-time budget lifted, so that they step beside the live ones): their
    held patches wait, the jobs out of the steps, until the live ones are done; the jobs' audio is bit for bit
    what they give without live requests, the live streams' what they give alone."""
    reference, batched, _ = engines
    monkeypatch.setattr(scheduler, "LIVE_STEP_SHARE", math.inf)
    monkeypatch.setattr(scheduler, "BACKGROUND_HELD_DECODES", 0)
    jobs = [dataclasses.replace(JOBS[0], seed=seed, max_len=30, retry_badcase=False) for seed in (41, 42)]
    unhurried = together(batched, jobs, stagger_s=0, streaming=[False, False])
    expected = [*unhurried, *(alone(reference, request) for request in LIVE[:2])]
    held_decodes, waited = batched.scheduler.held_decodes, []

    def logged(due: list) -> list:
        now = held_decodes(due)
        waited.extend(sequence.request.seed for sequence in due if sequence not in now)
        return now

    monkeypatch.setattr(batched.scheduler, "held_decodes", logged)
    _, jobs_running = counted_steps(batched, monkeypatch, running=2)
    results = together(batched, [*jobs, *LIVE[:2]], 0, [False, False, True, True], gate=(2, jobs_running))
    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    assert waited and set(waited) <= {41, 42}, waited  # a job's sentence end waited (one that ended after the live
    # ones, as the second can where its admission came a turn later on a loaded machine, did not); never a live one
    assert idle(batched)


def test_a_prompt_is_encoded_beside_the_batch_while_the_other_streams_go_on(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request with a recording joins a running stream: its prompt is encoded on the prompt workers' thread
    (slowed here) while the stream keeps stepping, it is admitted again once the prompt is there, and both sound
    as they do alone."""
    reference, batched, _ = engines
    rate = batched.runtime.info.prompt_sample_rate
    samples = np.sin(np.arange(rate) / 7).astype(np.float32) * 0.3
    cloned = SynthesisRequest(text="克隆的声音", seed=6, prompt=PromptAudio(samples, rate, "参考音频"), max_len=18)
    requests = [LIVE[0], cloned]
    expected = [alone(reference, request) for request in requests]
    batched.runtime.prompts.cache.clear()
    encode, encoding = batched.runtime.prompts.encode, []

    def slow(*arguments: object, **options: object) -> object:
        started = time.monotonic()
        encoded = encode(*arguments, **options)
        time.sleep(0.5)
        encoding.append((started, time.monotonic(), threading.current_thread().name))
        return encoded

    monkeypatch.setattr(batched.runtime.prompts, "encode", slow)
    _, live_running = counted_steps(batched, monkeypatch, running=1)
    step, stepped_at = batched.runner.step, []
    monkeypatch.setattr(batched.runner, "step", lambda *a, **k: stepped_at.append(time.monotonic()) or step(*a, **k))
    results = together(batched, requests, stagger_s=0, gate=(1, live_running))
    for want, got in zip(expected, results, strict=True):
        assert np.array_equal(got, want)
    [(started, ended, thread)] = encoding
    assert thread.startswith("voxcpm-prompts") and sum(started < t < ended for t in stepped_at) >= 5
    assert idle(batched)
