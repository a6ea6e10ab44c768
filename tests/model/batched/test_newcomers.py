"""Newcomers first: a request joining a running batch takes its first step on its own where the scheduler
says so (``scheduler.newcomers_first``), sequenced by the engine's loop; its audio and the others' stay the
reference's bit for bit.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.model.batched import scheduler, submission
from serve_app.model.types import SynthesisRequest
from tests.model.batched.engines import (
    TWO_RUNNING_AND_A_NEWCOMER,
    alone,
    counted_steps,
    together,
)


def test_a_request_joining_a_running_batch_gets_its_first_step_alone(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """first_step_alone: the newcomer's first patch comes from a step over its own slot right after its
    prefill, not from the batch's next step; its audio is still the reference's bit for bit."""
    reference, batched, _ = engines
    monkeypatch.setattr(batched.scheduler, "patch_s", math.inf)  # time to spare, however slow this machine's steps
    steps, two_running = counted_steps(batched, monkeypatch, running=2)
    requests = TWO_RUNNING_AND_A_NEWCOMER
    results = together(batched, requests, stagger_s=0.0, gate=(2, two_running))
    assert (1, 2) in steps  # one row, in slot 2: the newcomer alone, while the others held slots 0 and 1
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, alone(reference, request))


@pytest.mark.parametrize("short_of", ["room", "time"])
def test_newcomers_join_the_next_step_of_a_batch_without_room_or_time_to_spare(
    engines: tuple, monkeypatch: pytest.MonkeyPatch, short_of: str
) -> None:
    """Newcomers go first only while the batch has slots to spare (here: at most a quarter of its 4 held, so
    2 running are too many) and time (here: every step takes longer than a patch's audio)."""
    reference, batched, _ = engines
    if short_of == "room":
        monkeypatch.setattr(scheduler, "NEWCOMERS_FIRST_OCCUPANCY", 0.25)
    else:
        monkeypatch.setattr(batched.scheduler, "patch_s", -math.inf)
    steps, two_running = counted_steps(batched, monkeypatch, running=2)
    requests = TWO_RUNNING_AND_A_NEWCOMER
    results = together(batched, requests, stagger_s=0.0, gate=(2, two_running))
    assert (1, 2) not in steps and (3, 0) in steps  # the newcomer's first step was the batch's
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, alone(reference, request))


def test_newcomers_as_many_as_the_batch_join_its_next_step(engines: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the newcomers are more than half as many as the streams running, a step of their own would cost
    about the batch's: they join its next step."""
    reference, batched, _ = engines
    steps, one_running = counted_steps(batched, monkeypatch, running=1)
    requests = [
        SynthesisRequest(text="一个正在说话的长句子，还要说很久。", seed=11, max_len=60),
        SynthesisRequest(text="新来的", seed=12, max_len=8),
    ]
    results = together(batched, requests, stagger_s=0.0, gate=(1, one_running))
    assert all(first == 0 for _, first in steps) and (2, 0) in steps
    for request, got in zip(requests, results, strict=True):
        assert np.array_equal(got, alone(reference, request))


def test_a_stream_arriving_during_the_batch_model_call_is_heard_before_the_batch_vae_call(
    engines: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newcomers first: a stream that arrives while the batch's model call runs is admitted, prefilled and
    given its first step and its audio before that step's VAE call. A cancellation that arrives then waits
    for the next step's start (the batch's rows keep their slots until its VAE call): the others are still the
    reference's bit for bit."""
    reference, batched, _ = engines
    monkeypatch.setattr(batched.scheduler, "patch_s", math.inf)  # time to spare, however slow this machine's steps
    leaving = SynthesisRequest(text="一个很快就被取消的长句子，还要说很久。", seed=21, max_len=40)
    staying = SynthesisRequest(text="一个正在说话的长句子，也要说很久。", seed=22, max_len=40)
    newcomer = SynthesisRequest(text="新来的", seed=23, max_len=8)
    results: dict[int, np.ndarray] = {}
    threads: list[threading.Thread] = []
    events: list[str] = []
    step, decode = batched.runner.step, batched.vae.decode_new

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

    def stepped(rows: list, first: int = 0, **options: int) -> object:
        output = step(rows, first, **options)
        if events or (first == 0 and len(rows) == 2):  # both streams run: record from here
            events.append(f"model call: {len(rows)} rows from slot {first}")
        if events == ["model call: 2 rows from slot 0"]:  # meanwhile the first one leaves, a third arrives
            send(newcomer)
            gone = batched.scheduler.running[0]
            gone.cancelled = True  # as its consumer's closing flags it
            gone.deliver(submission.END)  # what its consumer sees as it closes
        return output

    def decoded(rows: list, latents: torch.Tensor, *placement: Any) -> tuple:
        if events:
            events.append(f"VAE call: {len(rows)} rows")
        return decode(rows, latents, *placement)

    monkeypatch.setattr(batched.runner, "step", stepped)
    monkeypatch.setattr(batched.vae, "decode_new", decoded)
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
    assert np.array_equal(results[staying.seed], alone(reference, staying))  # type: ignore[index]
    assert np.array_equal(results[newcomer.seed], alone(reference, newcomer))  # type: ignore[index]
