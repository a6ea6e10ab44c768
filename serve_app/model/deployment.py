"""The model deployment: one engine per replica (``engine.py``: the reference or the batched one).

The engine decides how generations share the model: the reference engine runs one at a time on its
thread, in arrival order (voxcpm keeps one static KV cache); the batched engine steps up to
``max_batch_size`` together and queues the rest. Either way the replica's event loop stays free, and
the deployment never serialises anything itself. Serve's ``max_ongoing_requests`` is how many
requests a replica holds (generating plus waiting in the engine); callers beyond that wait in
Serve's router, bounded by ``max_queued_requests``, and past it get 503 there, without reaching this
process: a full replica spends nothing on the requests it cannot take. Status goes out the other
way: the replica publishes it to the status board, so it is readable while every slot is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import faults, metrics
from serve_app.config import ModelConfig
from serve_app.errors import Forbidden
from serve_app.model import gpu
from serve_app.model.coalescing import coalesced
from serve_app.model.engine import Engine, joined
from serve_app.model.engine_factory import load_engine
from serve_app.model.status_board import PUBLISH_PERIOD_S
from serve_app.model.types import Chunk, ModelInfo, ReplicaStatus, SynthesisRequest
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.voice_store import VoiceStore

logger = logging.getLogger("ray.serve")

LOGGED_TEXT_CHARS = 24  # logs carry a short prefix of the text, never all of it

MIN_PUBLISH_INTERVAL_S = 0.1  # status reports coalesce changes closer together than this


# Health: Serve calls check_health every HEALTH_CHECK_PERIOD_S and replaces the replica after three failures
# in a row (a check that has not answered in HEALTH_CHECK_TIMEOUT_S fails: the event loop itself is stuck).
# A hung step is so found within max_step_s + 3 periods; a dead loop or a device error within 3 periods.
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 10.0
Fault = Literal["loop_killed", "step_hung", "device_error"]


@serve.deployment(
    name="VoxCPMModel",
    max_ongoing_requests=5,
    max_queued_requests=4,
    graceful_shutdown_timeout_s=60,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
)
class VoxCPMDeployment:
    def __init__(
        self, config: ModelConfig, voices_dir: str, status_board: DeploymentHandle, adapters_dir: str = "adapters"
    ) -> None:
        self._config = config
        self._engine: Engine = load_engine(config, VoiceStore(voices_dir), AdapterStore(adapters_dir))
        self._in_flight = 0
        self._metrics = metrics.model()
        self._metrics.cuda_graphs(self._engine.info.name, self._engine.info.graphs)
        self._prompt_lookups = self._engine.prompt_lookups()  # (hits, misses) last counted in the metrics
        self._status_changed = asyncio.Event()
        self._publishing = asyncio.get_running_loop().create_task(self._publish_status(status_board))

    def __del__(self) -> None:
        self._publishing.cancel()
        self._engine.close()

    async def _publish_status(self, board: DeploymentHandle) -> None:
        """Report to the status board on changes (a burst of them once) and every period as a sign of life.
        The GPUs are read (NVML: milliseconds) once a period, on a thread, not at every change."""
        gpus: list[dict] = []
        gpus_read_at = -PUBLISH_PERIOD_S
        while True:
            self._status_changed.clear()
            if time.monotonic() - gpus_read_at >= PUBLISH_PERIOD_S:
                gpus, gpus_read_at = await asyncio.to_thread(gpu.devices), time.monotonic()
            try:
                await board.publish.remote(self._engine.info, self._status(gpus))
            except Exception as exc:  # noqa: BLE001 - the board restarting must not stop the reports
                logger.warning("status board unreachable: %s", exc)
            await asyncio.sleep(MIN_PUBLISH_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_changed.wait(), PUBLISH_PERIOD_S)

    async def info(self) -> ModelInfo:
        return self._engine.info

    async def check_health(self) -> None:
        """Serve's probe: raises while the engine cannot serve (``liveness.py``), having ended its requests."""
        self._engine.health()

    async def inject_fault(self, fault: Fault) -> None:
        """Tests only (``faults.py``): the batched engine's next steps fail as ``fault`` says, on its loop thread,
        as a real fault would."""
        faults.allowed()
        runner = getattr(self._engine, "runner", None)  # the batched engine's
        if runner is None:
            raise Forbidden("fault injection needs the batched engine")
        runner.step = _faulty(runner.step, fault)

    async def check_adapter(self, path: str) -> None:
        """A staged adapter upload checked against this model's LoRA layers (``model/adapters.py``)."""
        await asyncio.to_thread(self._engine.check_adapter, path)

    async def stream(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        """Audio chunks (float32 mono at ``info().sample_rate``) as voxcpm produces them; with
        ``stream_coalesce_lead_s``, joined into fewer once the listener is well ahead (``coalescing.py``),
        except where the request asks where its sentences end (``segments``: every chunk and end as they come)."""
        cadence = metrics.Cadence(self._metrics.generation_chunk_gap, self._tags(request))
        config, rate = self._config, self._engine.info.sample_rate
        chunks = self._generate(request, streaming=True)
        if not request.segments:
            chunks = coalesced(chunks, rate, config.stream_coalesce_lead_s, config.stream_coalesce_max_s)
        async for piece in chunks:
            cadence.tick()
            yield piece

    async def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """The whole utterance (the seed's non-streaming API). It is produced sentence by sentence, so
        a caller that goes away (its client disconnected) stops it before the next sentence."""
        return joined([samples async for samples in self._generate(request, streaming=False)])

    async def sentences(self, request: SynthesisRequest) -> AsyncIterator[Chunk]:
        """The non-streaming API's audio a sentence at a time, each followed by where it ends (``segments``):
        what an answer with timestamps is made of."""
        async for piece in self._generate(dataclasses.replace(request, segments=True), streaming=False):
            yield piece

    async def _generate(self, request: SynthesisRequest, streaming: bool) -> AsyncIterator[Chunk]:
        """The engine's audio for the request, counted in flight from admission until the engine let go."""
        self._admit(request)
        admitted = time.perf_counter()
        produce = self._engine.stream if streaming else self._engine.sentences
        try:
            async for samples in produce(request, lambda: self._started(request, admitted)):
                yield samples
        finally:
            self._release()

    def _status(self, gpus: list[dict]) -> ReplicaStatus:
        context = serve.get_replica_context()
        memory = gpu.torch_memory(self._engine.info.device)
        hits, misses = self._engine.prompt_lookups()
        return ReplicaStatus(
            replica_id=context.replica_id.unique_id,
            node_id=gpu.node_id(),
            model=self._engine.info.name,
            device=self._engine.info.device,
            gpus=gpus,
            torch_memory_allocated_bytes=memory[0] if memory else None,
            torch_memory_reserved_bytes=memory[1] if memory else None,
            generations_in_flight=self._in_flight,
            prompt_cache_hits=hits,
            prompt_cache_misses=misses,
            reported_at=time.time(),
        )

    def _admit(self, request: SynthesisRequest) -> None:
        self._in_flight += 1
        logger.info(
            "request %s: %d characters (%r...), %d ahead",
            request.request_id,
            len(request.text),
            request.text[:LOGGED_TEXT_CHARS],
            self._in_flight - 1,
        )
        self._in_flight_changed()

    def _started(self, request: SynthesisRequest, admitted: float) -> None:
        """On the engine's thread, as the model takes the request up."""
        self._metrics.queue_wait.observe(time.perf_counter() - admitted, tags=self._tags(request))

    def _tags(self, request: SynthesisRequest) -> dict[str, str]:
        return {"model": self._config.name, "route": request.route}

    def _release(self) -> None:
        self._in_flight -= 1
        self._in_flight_changed()
        hits, misses = self._engine.prompt_lookups()
        for result, count in (("hit", hits - self._prompt_lookups[0]), ("miss", misses - self._prompt_lookups[1])):
            if count > 0:
                self._metrics.prompt_cache.inc(count, tags={"model": self._config.name, "result": result})
        self._prompt_lookups = (hits, misses)

    def _in_flight_changed(self) -> None:
        self._metrics.generations_in_flight.set(self._in_flight, tags={"model": self._config.name})
        self._status_changed.set()


class _Killed(BaseException):
    """Ends the thread it is raised on: the engine loop's ``except Exception`` lets it through."""


def _faulty(step: Callable[..., Any], fault: Fault) -> Callable[..., Any]:
    """``step`` failing as ``fault`` says (``inject_fault``)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if fault == "loop_killed":
            raise _Killed("injected: the engine's thread ends")
        if fault == "step_hung":
            threading.Event().wait()  # for good: the replica is replaced around it
        if fault == "device_error":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return step(*args, **kwargs)

    return run
