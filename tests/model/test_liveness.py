"""The engines' health (``liveness.py``): a dead or stuck thread or a device error fails the check and ends every
request the engine holds with a 503, never a hang; a request's own error does neither."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from serve_app.errors import Unavailable
from serve_app.model.engine import Engine
from serve_app.model.liveness import Liveness, Unhealthy, is_device_error
from serve_app.model.types import SynthesisRequest

DEVICE_ERROR = RuntimeError("CUDA error: an illegal memory access was encountered")
LONG = SynthesisRequest(text="这是一个很长的句子，用来测试健康检查。" * 10, max_len=400)


def test_device_errors_are_fatal_and_a_requests_own_are_not() -> None:
    assert is_device_error(DEVICE_ERROR)
    assert not is_device_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_device_error(ValueError("the prompt's audio is empty"))
    liveness = Liveness(max_step_s=5)
    own = ValueError("bad input")
    assert liveness.failure(own) is own and liveness.problem() is None
    failed = liveness.failure(DEVICE_ERROR)
    assert isinstance(failed, Unavailable) and failed.retry_after_s is not None
    assert "device error" in (liveness.problem() or "")


def test_a_step_past_the_bound_fails_the_check_for_good_and_ends_the_requests_held() -> None:
    liveness = Liveness(max_step_s=0.2)
    ended: list[BaseException] = []
    with liveness.serving(ended.append):
        liveness.busy()
        liveness.check()  # within the bound
        time.sleep(0.3)
        with pytest.raises(Unhealthy, match="max_step_s"):
            liveness.check()
        assert len(ended) == 1 and isinstance(ended[0], Unavailable)
    liveness.idle()  # the step came back: too late
    with pytest.raises(Unhealthy):
        liveness.check()
    with pytest.raises(Unavailable), liveness.serving(ended.append):  # new requests are refused
        pass
    assert len(ended) == 1


def test_waiting_for_work_is_not_a_step() -> None:
    """The batched loop's inbox: blocking on it is idle time, however long; each read starts a step."""
    liveness = Liveness(max_step_s=0.1)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(liveness.inbox.get()))
    reader.start()
    time.sleep(0.2)
    liveness.check()
    liveness.inbox.put("work")
    reader.join(5)
    assert got == ["work"]
    time.sleep(0.2)  # busy since the read, past the bound
    with pytest.raises(Unhealthy):
        liveness.check()


def test_a_dead_thread_fails_the_check() -> None:
    made: list[Liveness] = []
    thread = threading.Thread(target=lambda: made.append(Liveness(max_step_s=60)))
    thread.start()
    thread.join()
    with pytest.raises(Unhealthy, match="died"):
        made[0].check()


def test_timed_marks_each_item_a_step_and_turns_device_errors_into_503() -> None:
    liveness = Liveness(max_step_s=60)
    seen: list[bool] = []

    def items() -> Iterator[int]:
        seen.append(liveness.problem() is None and liveness._busy_since is not None)
        yield 1
        raise DEVICE_ERROR

    timed = liveness.timed(items())
    assert next(timed) == 1 and seen == [True] and liveness._busy_since is None
    with pytest.raises(Unavailable):
        next(timed)
    with pytest.raises(Unhealthy, match="device error"):
        liveness.check()


# -- the engines, in-process on the tiny synthetic model ---------------------------------------------------


def _faulty_step(engine: Engine, fault: Callable[[], Any]) -> None:
    """The batched engine's next steps run ``fault`` first, on its loop thread."""
    step = engine.runner.step  # type: ignore[attr-defined]

    def run(*args: Any, **kwargs: Any) -> Any:
        fault()
        return step(*args, **kwargs)

    engine.runner.step = run  # type: ignore[attr-defined]


async def _outcome(engine: Engine, request: SynthesisRequest) -> BaseException | None:
    try:
        async for _ in engine.stream(request, lambda: None):
            pass
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None


async def _ended_by_health_check(engine: Engine, timeout_s: float) -> list[BaseException | None]:
    """Two requests in flight (one generating, one behind it or beside it), then the health check until it
    fails; both must end within ``timeout_s``."""
    requests = [asyncio.ensure_future(_outcome(engine, LONG)) for _ in range(2)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            engine.health()
        except Unhealthy:
            break
        await asyncio.sleep(0.05)
    return await asyncio.wait_for(asyncio.gather(*requests), timeout_s)


KILLED_THREAD = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.mark.parametrize("fault", ["step_hung", pytest.param("loop_killed", marks=KILLED_THREAD)])
def test_batched_engine_dead_or_stuck_loop(synthetic_engine: Callable[..., Engine], fault: str) -> None:
    engine = synthetic_engine("tiny-voxcpm1.5", engine="batched", max_batch_size=1, max_step_s=1.0)
    release = threading.Event()

    class Killed(BaseException):
        pass

    def hang() -> None:
        release.wait(60)

    def kill() -> None:
        raise Killed

    engine.health()
    _faulty_step(engine, hang if fault == "step_hung" else kill)
    try:
        outcomes = asyncio.run(_ended_by_health_check(engine, 10))
    finally:
        release.set()
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    assert isinstance(asyncio.run(_outcome(engine, LONG)), Unavailable)  # refused at once


def test_batched_engine_device_error(synthetic_engine: Callable[..., Engine]) -> None:
    engine = synthetic_engine("tiny-voxcpm1.5", engine="batched", max_batch_size=1, max_step_s=30.0)

    def device_error() -> None:
        raise DEVICE_ERROR

    _faulty_step(engine, device_error)
    outcomes = asyncio.run(_ended_by_health_check(engine, 10))
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    with pytest.raises(Unhealthy, match="device error"):
        engine.health()


def test_reference_engine_stuck_generation(synthetic_engine: Callable[..., Engine]) -> None:
    """The generation thread hangs in a step: the request on it and the one waiting for it both end, without
    waiting for the thread."""
    engine = synthetic_engine("tiny-voxcpm1.5", engine="voxcpm", max_step_s=1.0)
    release = threading.Event()
    decode = engine.decoder.decode_patches  # type: ignore[attr-defined]

    def hung(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return decode(*args, **kwargs)

    engine.decoder.decode_patches = hung  # type: ignore[attr-defined]  # the engine is this test's alone
    try:
        outcomes = asyncio.run(_ended_by_health_check(engine, 10))
    finally:
        release.set()
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
