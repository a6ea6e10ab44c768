"""What the batched engine's tests share: a mix of requests, the reference audio of one alone, requests sent
together from threads, the steps an engine runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.batched.sequence import Sequence
from serve_app.model.decode_grouping import DecodeGrouping
from serve_app.model.engine import joined
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import Priority, PromptAudio, SynthesisRequest

PRESETS = ["tiny-voxcpm1.5", "tiny-voxcpm2"]


DECODE_ROUNDING = 1e-5  # a sentence decoded patch by patch against voxcpm's whole-sentence decode


def mixed_requests(prompt_rate: int) -> list[SynthesisRequest]:
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


def alone(reference: ReferenceEngine, request: SynthesisRequest) -> np.ndarray:
    return joined(reference.generate(request, streaming=True))


def together(
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


def counted_steps(
    batched: BatchedEngine, monkeypatch: pytest.MonkeyPatch, running: int = 0
) -> tuple[list[tuple[int, int]], threading.Event]:
    """(rows, first slot) of every step the engine runs from now on, and an event set once a step of the whole
    batch has run with ``running`` rows (a gate for newcomers: they join while those run)."""
    steps: list[tuple[int, int]] = []
    batch_running = threading.Event()
    step = batched.runner.step

    def counted(rows: list, first: int = 0, **options: int) -> object:
        steps.append((len(rows), first))
        if first == 0 and len(rows) == running:
            batch_running.set()
        return step(rows, first, **options)

    monkeypatch.setattr(batched.runner, "step", counted)
    return steps, batch_running


TWO_RUNNING_AND_A_NEWCOMER = [  # the third joins once the first two speak (``counted_steps``' gate)
    SynthesisRequest(text="一个正在说话的长句子，还要说很久。", seed=11, max_len=60),
    SynthesisRequest(text="另一个正在说话的长句子，也要说很久。", seed=13, max_len=60),
    SynthesisRequest(text="新来的", seed=12, max_len=8),
]


def idle(engine: BatchedEngine) -> bool:
    """No request left in a slot or the queue (the loop thread retires them between steps)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not engine.scheduler:
            return True
        time.sleep(0.01)
    return False


def make_sequence(name: str, streaming: bool = True, priority: Priority = "interactive") -> Sequence:
    """A request's state with none of a model's: for the scheduler and the VAE stage alone."""
    grouping = DecodeGrouping(16, streaming=streaming)
    request = SynthesisRequest(text=name, priority=priority)
    return Sequence(request, lambda: None, lambda _: None, None, None, grouping)  # type: ignore[arg-type]
