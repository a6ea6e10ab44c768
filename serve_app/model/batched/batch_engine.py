"""The batched engine: many requests generating together on one model instance (continuous batching).

One loop thread owns the model (it loads it, too). Each turn of the loop is nano-vllm's ``step``:
schedule, run, post-process. Between steps it takes in new requests and cancellations, admits newcomers
into free KV slots (``scheduler.py``) and prefills them together, packed, with whatever else arrived
meanwhile (``runner.py``, ``kv_slots.py``); then it runs one decode step for every running request
together (``runner.py``, the math in ``layers.py``) and hands each request its part of the output
(``postprocess.py``: its patches through the VAE a few at a time, ``decode_grouping.py``, each request
with its own causal-conv state; sentence ends, retry_badcase). A request leaves between steps when its
text is spoken, its ``max_len`` is reached, or it is cancelled (its consumer closed, the client
disconnected); what one request does (a bad prompt, a cancel, a failure of its own) never touches the
others. Long text, voices, prompts and checks are the runtime's, as in the reference engine, so a
request's audio is the one the reference engine gives it alone.

Many async callers, one loop thread: each request has a queue its chunks go into
(``loop.call_soon_threadsafe``), and closing its iterator cancels it by identity. Output is not
throttled per request (a slow reader would stall the whole batch): what a client has not read is
bounded by ``max_len`` and buffered by Serve's proxy, as with the reference engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from serve_app.audio.seams import Crossfader
from serve_app.config import ModelConfig
from serve_app.errors import InvalidField
from serve_app.model.adapters import LoadedAdapter
from serve_app.model.batched import graph_check
from serve_app.model.batched.postprocess import GENERATING, Postprocessor
from serve_app.model.batched.runner import Prefilled, StepRunner
from serve_app.model.batched.scheduler import Scheduler
from serve_app.model.batched.sequence import Sequence, Status
from serve_app.model.decode_grouping import group_sizes
from serve_app.model.engine import RuntimeEngine, Started, joined
from serve_app.model.liveness import Liveness
from serve_app.model.plan import Sentence
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.types import Chunk, SynthesisRequest
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.voice_store import VoiceStore

logger = logging.getLogger(__name__)

_END = object()  # a request's last item
STEP_TIME_SMOOTHING = 0.1  # weight of the newest step in the batch's running mean step time
_STOP = object()  # the loop thread's last command


class BatchedEngine(RuntimeEngine):
    def __init__(self, runtime: VoxCPMRuntime, config: ModelConfig) -> None:
        self.runtime = runtime
        length = config.kv_cache_length or runtime.model.config.max_length
        self.runner = StepRunner(runtime.model, config.max_batch_size, length)
        cuda = self.runner.base_kv.cache.is_cuda
        self.info = dataclasses.replace(runtime.info, graphs=graph_check.uncaptured(config.cuda_graphs, cuda))
        self.decoder = runtime.decoder(config.max_batch_size)
        self.postprocessor = Postprocessor(runtime, self.decoder)
        self.scheduler = Scheduler(config.max_batch_size)
        self.liveness = Liveness(config.max_step_s)  # of the loop thread: it builds the engine, then runs it
        self._inbox: queue.SimpleQueue[tuple[str, Sequence] | object] = self.liveness.inbox  # reads: signs of life
        self._unprefilled: list[Sequence] = []  # running requests about to start a sentence
        self._held: list[object] = []  # commands taken in the middle of a step, for after it
        graphs = config.cuda_graphs and cuda  # steps replayed from CUDA graphs
        self._first_step_alone = not graphs if config.first_step_alone is None else config.first_step_alone
        self._step_s = 0.0  # mean time of the batch's steps (model and VAE calls, post-processing)
        self._patch_s = runtime.step_samples / runtime.info.sample_rate  # the audio a step makes per request

    @classmethod
    def load(
        cls, config: ModelConfig, voices: VoiceStore | None = None, adapters: AdapterStore | None = None
    ) -> BatchedEngine:
        """Loaded on the loop thread, which then runs the batch: one thread does all the torch work (``engine.py``)."""
        loaded: Future[BatchedEngine] = Future()
        arguments = (config, voices, adapters, loaded)
        threading.Thread(target=cls._run, args=arguments, name="voxcpm-batch", daemon=True).start()
        engine = loaded.result()
        if config.warmup:
            engine.generate(engine.runtime.warmup_request(), streaming=True)
            engine.runtime.prompts.cache.clear()
        logger.info(
            "loaded %s: batches of up to %d, KV slots of %d positions (%.1f MiB)",
            engine.info,
            config.max_batch_size,
            engine.runner.kv_length,
            (engine.runner.base_kv.bytes + engine.runner.residual_kv.bytes) / 2**20,
        )
        return engine

    # -- the interface (event loop side) ---------------------------------------------------------
    def close(self) -> None:
        self._inbox.put(_STOP)
        self.liveness.join(10)
        self.runtime.close()

    def generate(self, request: SynthesisRequest, streaming: bool) -> np.ndarray:
        """The whole audio of one request, from any thread but the loop's (warm-up, tests, benchmarks)."""
        done, out = threading.Event(), []

        def deliver(item: object) -> None:
            out.append(item)
            if item is _END or isinstance(item, BaseException):
                done.set()

        adapter = self.runtime.adapter(request)
        self._inbox.put(("add", self._sequence(request, lambda: None, deliver, streaming, adapter)))
        done.wait()
        if isinstance(out[-1], BaseException):
            raise out[-1]
        return joined(out[:-1])

    async def _generation(self, request: SynthesisRequest, started: Started, streaming: bool) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        deliver = functools.partial(loop.call_soon_threadsafe, items.put_nowait)
        adapter = None  # the base model: no hop to a thread on the way to the engine
        if request.adapter is not None:
            adapter = await asyncio.to_thread(self.runtime.adapter, request)  # a file read, off the loop thread
        sequence = self._sequence(request, started, deliver, streaming, adapter)
        with self.liveness.serving(deliver):  # refused, or ended, once the loop is found dead or stuck
            self._inbox.put(("add", sequence))
            try:
                while (item := await items.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item  # type: ignore[misc]
            finally:
                sequence.cancelled = True
                self._inbox.put(("cancel", sequence))

    def _sequence(
        self,
        request: SynthesisRequest,
        started: Started,
        deliver: Callable[[object], Any],
        streaming: bool,
        adapter: LoadedAdapter | None,
    ) -> Sequence:
        generator = torch.Generator(device=self.runtime.model.device)
        generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
        crossfade, grouping = Crossfader(self.runtime.seam_samples), self.runtime.decode_grouping(streaming)
        return Sequence(request, started, deliver, crossfade, generator, grouping, adapter)

    # -- the loop thread -------------------------------------------------------------------------
    @classmethod
    def _run(
        cls,
        config: ModelConfig,
        voices: VoiceStore | None,
        adapters: AdapterStore | None,
        loaded: Future[BatchedEngine],
    ) -> None:
        try:
            engine = cls(VoxCPMRuntime.load(config, voices, adapters), config)
            if config.warmup:
                engine.decoder.warm_up(engine.runtime.model.patch_size, group_sizes(config.decode_patches))
            if config.cuda_graphs and engine.runner.base_kv.cache.is_cuda:
                engine._capture_graphs()
        except BaseException as exc:  # noqa: BLE001 - raised by load() in the caller's thread
            loaded.set_exception(exc)
            return
        loaded.set_result(engine)
        engine._loop()

    def _capture_graphs(self, capture: bool = True) -> None:
        """CUDA graphs of the decode step (for the default ``inference_timesteps``) and of the streams' VAE decode,
        trusted once they give the eager step's numbers (``graph_check.py``; ``capture`` False: its CPU emulation)."""
        timesteps, frames, exact = (
            SynthesisRequest.inference_timesteps,
            self.runtime.model.patch_size,
            self.runtime.batch_invariant,
        )
        state = graph_check.guarded(self.runner, self.decoder, timesteps, frames, exact, capture)
        self.info = dataclasses.replace(self.info, graphs=state)

    def _loop(self) -> None:
        while True:
            try:
                if not self._take_commands(block=not self.scheduler) or not self._admit():
                    return
                if self.scheduler.running:
                    self._step()
            except Exception as exc:  # the loop must outlive anything: fail what it holds, go on
                logger.exception("batched engine loop failed")
                for sequence in [*self.scheduler.waiting, *self.scheduler.running]:
                    self._fail(sequence, exc)

    def _admit(self, hold: bool = False) -> bool:
        """Waiting requests joined (``_join``) and, where newcomers go first, given their first step now;
        False once the engine closes."""
        if (joined := self._join(hold)) is None:
            return False
        if self._first_step_alone:
            self._first_steps(joined)
        return True

    def _join(self, hold: bool = False) -> list[Sequence] | None:
        """Admit waiting requests into free slots and prepare them, take in the requests that arrived
        meanwhile and do the same until none is admitted, then prefill them all in one pass: a burst that
        arrives over a few milliseconds starts in one step with one prefill, not one per arrival (bounded
        by the free slots). The requests admitted; None once the engine closes."""
        joined: list[Sequence] = []
        while admitted := self.scheduler.admit():
            for sequence in admitted:
                self._guarded(sequence, self._start, sequence)
            joined += admitted
            if not self._take_commands(block=False, hold=hold):
                return None
        self._prefill()
        return joined

    def _first_steps(self, joined: list[Sequence]) -> None:
        """The first step of streams that just joined a running batch, on their own (``first_step_alone``), where
        the scheduler says they go first: they hold the batch's last slots, so the step is over those slots only,
        and their first audio does not wait for a step of the whole batch."""
        placed = [sequence for sequence in joined if sequence.lm_hidden is not None]  # prefilled
        fresh = [sequence for sequence in placed if sequence.status is Status.RUNNING]
        first = self.scheduler.newcomers_first(fresh, self._step_s, self._patch_s)
        if first is not None:
            self._step(self.scheduler.running[first:], first)
            self._prefill()  # a sentence that ended in that step starts before the batch's step

    def _take_commands(self, block: bool, hold: bool = False) -> bool:
        """Add and cancel requests as asked since the last step; False once the engine closes. With ``hold``
        (between a step's model call and its VAE call, whose rows must keep their slots) only additions are
        taken: cancellations and the stop wait for the next call without it."""
        while True:
            if self._held and not hold:
                command = self._held.pop(0)
            else:
                try:
                    command = self._inbox.get(block=block)
                except queue.Empty:
                    return True
            block = False
            if hold and (command is _STOP or command[0] == "cancel"):  # type: ignore[index]
                self._held.append(command)
                continue
            if command is _STOP:
                for sequence in [*self.scheduler.waiting, *self.scheduler.running]:
                    self._fail(sequence, RuntimeError("the model replica is shutting down"))
                return False
            action, sequence = command  # type: ignore[misc]
            if action == "add" and not sequence.cancelled:
                self.scheduler.add(sequence)
            elif action == "cancel" and sequence.status is not Status.FINISHED:
                self._retire(sequence)

    def _start(self, sequence: Sequence) -> None:
        sequence.started()
        sequence.plan = self.runtime.utterance(sequence.request)
        self._next_sentence(sequence, next(sequence.plan, None))

    def _next_sentence(self, sequence: Sequence, sentence: Sentence | None) -> None:
        """Set the request up to generate the sentence (prefilled before the next step), or finish it."""
        if sentence is None:
            self._finish(sequence)
            return
        sequence.sentence = sentence
        sequence.attempts += 1
        inputs = self.runtime.model_inputs(sentence, sequence.request)
        room = self.runner.kv_length - inputs.text.shape[1]  # positions left in the slot for generated steps
        if room <= 0:
            raise InvalidField("the text and its prompt are longer than a KV slot holds (kv_cache_length)", "text")
        sequence.inputs = dataclasses.replace(inputs, max_len=min(inputs.max_len, room))
        self._unprefilled.append(sequence)

    def _prefill(self) -> None:
        """Prefill every request that starts a sentence, together; each alone if that fails, so that a
        request whose inputs break the pack fails alone."""
        pending = [sequence for sequence in self._unprefilled if sequence.status is Status.RUNNING]
        self._unprefilled = []
        if len(pending) > 1:
            try:
                prefilled = self._prefilled(pending)
            except Exception:
                logger.warning("prefill of %d requests together failed: each alone", len(pending), exc_info=True)
            else:
                for sequence, state in zip(pending, prefilled, strict=True):
                    self._guarded(sequence, self._place, sequence, state)
                return
        for sequence in pending:
            self._guarded(sequence, lambda alone: self._place(alone, self._prefilled([alone])[0]), sequence)

    def _prefilled(self, sequences: list[Sequence]) -> list[Prefilled]:
        """The sequences' sentences prefilled together into their KV slots, their slots' VAE state cleared."""
        slots = [sequence.slot for sequence in sequences]
        batch = [sequence.inputs for sequence in sequences]
        prefilled = self.runner.prefill(batch, slots, [sequence.adapter for sequence in sequences])  # type: ignore[arg-type]
        self.decoder.reset(slots)
        return prefilled

    def _place(self, sequence: Sequence, prefilled: Prefilled) -> None:
        """The prefilled sentence's state (its KV slot and VAE state are ready): its first step comes next."""
        if (context := sequence.inputs.context()) is not None:  # type: ignore[union-attr]
            self.decoder.decode(context, [sequence.slot])
        sequence.step, sequence.position = 0, prefilled.length
        sequence.lm_hidden, sequence.residual_hidden = prefilled.lm_hidden, prefilled.residual_hidden
        sequence.condition = prefilled.condition
        sequence.pieces, sequence.latents = [], []

    def _step(self, sequences: list[Sequence] | None = None, first: int = 0) -> None:
        """One decode step for the batch (or for ``sequences``, which hold slots ``first``..). Newcomers that
        arrive while the batch's model call runs are admitted before its VAE call (``_newcomers_first``). The
        requests whose audio is a patch per call get it before the grouped calls run (``postprocess.py``)."""
        running = list(self.scheduler.running if sequences is None else sequences)
        rows = [sequence.row() for sequence in running]
        started = time.perf_counter()
        try:
            output = self.runner.step(rows, first)
            if sequences is None:
                newcomers_started = time.perf_counter()
                self._newcomers_first()  # each newcomer's failure is its own
                started += time.perf_counter() - newcomers_started  # not the batch's own time
            whole = first == 0 and len(running) == len(self.scheduler.running)
            pieces, grouped = self.postprocessor.decode(running, output.latents, first, whole)  # before any wait
            stop = output.stop.tolist()
        except Exception as exc:  # a failure of the shared step fails the batch, not the replica
            logger.exception("batched step failed for %d requests", len(running))
            for sequence in running:
                self._fail(sequence, exc)
            return
        for index, sequence in enumerate(running):
            sequence.lm_hidden = output.lm_hidden[index : index + 1]
            sequence.residual_hidden = output.residual_hidden[index : index + 1]
            sequence.condition = output.patches[index : index + 1]
            sequence.position += 1
            if index not in grouped:
                self._guarded(sequence, self._postprocess, sequence, pieces.get(index), stop[index])
        for index, size in grouped.items():
            sequence = running[index]
            self._guarded(sequence, self._postprocess_group, sequence, size, stop[index])
        if sequences is None:
            self._step_s += STEP_TIME_SMOOTHING * (time.perf_counter() - started - self._step_s)

    def _newcomers_first(self) -> None:
        """Between the batch's model call and its VAE call: streams that arrived meanwhile are admitted,
        prefilled and given their first step and its audio now (``first_step_alone``), so a newcomer waits for
        at most one of the two calls in flight, not for the whole step; the batch's next chunk waits for that
        (it is ahead of its listener: chunks are a patch long and a step takes a fraction of one). The
        batch's rows keep their slots meanwhile (cancellations wait: ``_take_commands``)."""
        if self._first_step_alone and not self._inbox.empty():
            self._take_commands(block=False, hold=True)
            self._admit(hold=True)

    def _postprocess_group(self, sequence: Sequence, size: int | None, stop: bool) -> None:
        self._postprocess(sequence, self.postprocessor.decode_group(sequence, size), stop)

    def _postprocess(self, sequence: Sequence, piece: np.ndarray | None, stop: bool) -> None:
        following = self.postprocessor.emit(sequence, piece, stop)
        if following is not GENERATING:
            self._next_sentence(sequence, following)

    def _finish(self, sequence: Sequence) -> None:
        if len(tail := sequence.crossfade.flush()):
            sequence.deliver(tail)
        self.postprocessor.segment_ended(sequence, sequence.crossfade.emitted)
        sequence.deliver(_END)
        self._retire(sequence)

    def _fail(self, sequence: Sequence, error: BaseException) -> None:
        sequence.deliver(self.liveness.failure(error))  # a device error: recorded, and a 503 for the client
        self._retire(sequence)

    def _retire(self, sequence: Sequence) -> None:
        moved = self.scheduler.retire(sequence)
        if moved is not None:
            self.runner.move(*moved)
            self.decoder.move(*moved)
        if sequence.plan is not None:
            sequence.plan.close()

    def _guarded(self, sequence: Sequence, work: Callable[..., None], *arguments: Any) -> None:
        """Run one request's own work; a failure fails that request alone."""
        try:
            work(*arguments)
        except Exception as exc:  # noqa: BLE001 - handed to the request's consumer, which re-raises it
            if sequence.status is not Status.FINISHED:
                self._fail(sequence, exc)
