"""The model deployment: one VoxCPM engine per replica, one generation at a time.

Generations run on a single worker thread owned by the replica, so they are serialized in
arrival order (voxcpm has one static KV cache) while the replica's event loop stays free:
status and health calls never wait behind a generation. A replica queues at most
``max_waiting_requests`` generations behind the running one and sheds the rest (503), so its
``max_ongoing_requests`` always leaves room for status calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from serve_app import gpu, metrics
from serve_app.config import ModelConfig
from serve_app.errors import Overloaded
from serve_app.model.engine import VoxCPMEngine
from serve_app.model.thread_stream import iterate_in_thread
from serve_app.model.types import ModelInfo, ReplicaStatus, SynthesisRequest
from serve_app.voices import VoiceStore

logger = logging.getLogger("ray.serve")

LOGGED_TEXT_CHARS = 24  # logs carry a short prefix of the text, never all of it

# Chunks a generation may run ahead of the consumer before it pauses (bounded buffering).
MAX_BUFFERED_CHUNKS = 32


@serve.deployment(name="VoxCPMModel", max_ongoing_requests=8, graceful_shutdown_timeout_s=60)
class VoxCPMDeployment:
    def __init__(self, config: ModelConfig, voices_dir: str) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxcpm-generate")
        self._engine = self._executor.submit(VoxCPMEngine.load, config, VoiceStore(voices_dir)).result()
        self._in_flight = 0
        self._metrics = metrics.model()
        # the engine's prompt-cache (hits, misses) last reported (warm-up's are not requests)
        self._prompt_lookups = (self._engine.prompts.hits, self._engine.prompts.misses)

    def __del__(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._engine.close()

    async def info(self) -> ModelInfo:
        return self._engine.info

    async def stream(self, request: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Audio chunks (float32 mono at ``info().sample_rate``) as voxcpm produces them."""
        async for chunk in self._generate(request, self._engine.stream):
            yield chunk

    async def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """The whole utterance (the seed's non-streaming API). It is produced sentence by sentence, so
        a caller that goes away (its client disconnected) stops it before the next sentence."""
        sentences = [samples async for samples in self._generate(request, self._engine.sentences)]
        return np.concatenate([np.zeros(0, np.float32), *sentences])

    def _generate(
        self, request: SynthesisRequest, produce: Callable[[SynthesisRequest], Iterator[np.ndarray]]
    ) -> AsyncIterator[np.ndarray]:
        """``produce(request)`` on the generation thread, after the generations ahead of it."""
        self._admit(request)
        admitted = time.perf_counter()

        def generate() -> Iterator[np.ndarray]:
            self._started(request, admitted)
            yield from produce(request)

        return iterate_in_thread(generate, self._executor, MAX_BUFFERED_CHUNKS, on_done=self._release)

    async def status(self) -> ReplicaStatus:
        context = serve.get_replica_context()
        memory = gpu.torch_memory(self._engine.info.device)
        return ReplicaStatus(
            replica_id=context.replica_id.unique_id,
            node_id=gpu.node_id(),
            model=self._engine.info.name,
            device=self._engine.info.device,
            gpus=gpu.devices(),
            torch_memory_allocated_bytes=memory[0] if memory else None,
            torch_memory_reserved_bytes=memory[1] if memory else None,
            generations_in_flight=self._in_flight,
            prompt_cache_hits=self._engine.prompts.hits,
            prompt_cache_misses=self._engine.prompts.misses,
        )

    def _admit(self, request: SynthesisRequest) -> None:
        if self._in_flight > self._config.max_waiting_requests:
            logger.warning("request %s shed: %d generations in flight", request.request_id, self._in_flight)
            raise Overloaded("the model is busy; retry shortly")
        self._in_flight += 1
        logger.info(
            "request %s: %d characters (%r...), %d ahead",
            request.request_id,
            len(request.text),
            request.text[:LOGGED_TEXT_CHARS],
            self._in_flight - 1,
        )
        self._metrics.generations_in_flight.set(self._in_flight, tags={"model": self._config.name})

    def _started(self, request: SynthesisRequest, admitted: float) -> None:
        """On the generation thread, as the model takes the request up."""
        tags = {"model": self._config.name, "route": request.route}
        self._metrics.queue_wait.observe(time.perf_counter() - admitted, tags=tags)

    def _release(self) -> None:
        self._in_flight -= 1
        self._metrics.generations_in_flight.set(self._in_flight, tags={"model": self._config.name})
        hits, misses = self._engine.prompts.hits, self._engine.prompts.misses
        for result, count in (("hit", hits - self._prompt_lookups[0]), ("miss", misses - self._prompt_lookups[1])):
            if count > 0:
                self._metrics.prompt_cache.inc(count, tags={"model": self._config.name, "result": result})
        self._prompt_lookups = (hits, misses)
