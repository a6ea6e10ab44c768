"""The batched engine: many requests generating together on one model instance (continuous batching).

One loop thread owns the model (it loads it, too); each turn of its loop is nano-vllm's step, its phases
sequenced in ``_turn`` alone (no phase calls another): newcomers admitted and every sentence that starts
prefilled, packed (``scheduler.py``, ``runner.py``); the slots of requests that left given up; the step
launched (the model call over every running request: ``runner.py``, the math in ``layers.py``, the state in
``kv_slots.py`` and ``hidden_slots.py``) and finished (the VAE call, ``vae_stage.py``, then the host's
bookkeeping, ``postprocess.py``). Where the scheduler lets newcomers go first, those that arrive while the
model call runs take a step of their own before the batch's is finished. A request leaves between steps
when its text is spoken, its ``max_len`` is reached, or it is cancelled; what one request does (a bad
prompt, a cancel, a failure of its own) never touches the others. Long text, voices, prompts and checks
are the runtime's, as in the reference engine, so a request's audio is the one the reference engine gives
it alone.

Many async callers, one loop thread: requests come in and their audio goes out through ``submission.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from serve_app.config import ModelConfig
from serve_app.errors import InvalidField
from serve_app.model.batched import graph_check
from serve_app.model.batched.layers import StepOutput
from serve_app.model.batched.postprocess import GENERATING, Outcome, Postprocessor
from serve_app.model.batched.prompt_workers import PromptWorkers
from serve_app.model.batched.runner import StepRunner
from serve_app.model.batched.scheduler import Scheduler
from serve_app.model.batched.sequence import Sequence, Status
from serve_app.model.batched.submission import END, Submissions
from serve_app.model.batched.vae_stage import VAEStage
from serve_app.model.decode_grouping import group_sizes
from serve_app.model.engine import RuntimeEngine, Started
from serve_app.model.liveness import Liveness
from serve_app.model.plan import Sentence
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.types import Chunk, SynthesisRequest
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.voice_store import VoiceStore

logger = logging.getLogger(__name__)

_STOP = object()  # the loop thread's last command
T = TypeVar("T")


@dataclass
class Launched:
    """A step whose model call is queued on the device: the rows in slots ``first``.. and its output."""

    sequences: list[Sequence]
    first: int
    output: StepOutput


class BatchedEngine(RuntimeEngine):
    def __init__(self, runtime: VoxCPMRuntime, config: ModelConfig) -> None:
        self.runtime = runtime
        length = config.kv_cache_length or runtime.model.config.max_length
        self.runner = StepRunner(runtime.model, config.max_batch_size, length)
        cuda = self.runner.base_kv.cache.is_cuda
        self.info = dataclasses.replace(runtime.info, graphs=graph_check.uncaptured(config.cuda_graphs, cuda))
        self.decoder = runtime.decoder(config.max_batch_size)
        self.vae = VAEStage(self.decoder, runtime.batch_invariant)
        self.postprocessor = Postprocessor(runtime)
        graphs = config.cuda_graphs and cuda  # steps replayed from CUDA graphs
        newcomers_first = not graphs if config.first_step_alone is None else config.first_step_alone
        patch_s = runtime.step_samples / runtime.info.sample_rate  # the audio a step makes per request
        self.scheduler = Scheduler(config.max_batch_size, newcomers_first, patch_s, config.background_share)
        self.liveness = Liveness(config.max_step_s)  # of the loop thread: it builds the engine, then runs it
        self._inbox: queue.SimpleQueue[Sequence | object] = self.liveness.inbox  # reads: signs of life
        self.submissions = Submissions(runtime, self._inbox, self.liveness)
        self.prompt_workers = PromptWorkers()
        self._closing = False

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
        self.prompt_workers.close()
        self.runtime.close()

    def generate(self, request: SynthesisRequest, streaming: bool) -> np.ndarray:
        """The whole audio of one request, from any thread but the loop's (warm-up, tests, benchmarks)."""
        return self.submissions.generate(request, streaming)

    def _generation(self, request: SynthesisRequest, started: Started, streaming: bool) -> AsyncIterator[Chunk]:
        return self.submissions.generation(request, started, streaming)

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
        while self._take_commands(block=not self.scheduler):
            try:
                self._turn()
            except Exception as exc:  # the loop must outlive anything: fail what it holds, go on
                logger.exception("batched engine loop failed")
                self._fail_all(self.scheduler.holding(), exc)
        self._fail_all(self.scheduler.holding(), RuntimeError("the model replica is shutting down"))

    def _turn(self) -> None:
        """One step, phase by phase: admission and prefill, between steps (the requests that left give up their
        slots), launch (the model call), finish (the VAE call, post-processing), between steps again (so that the
        next admission sees the batch as it is). Where the scheduler says newcomers go first, those that joined
        now, and those that arrived while the batch's model call ran, take a step of their own first: a newcomer
        waits for at most one of the batch's two calls in flight, not for a whole step (the batch's next chunk
        waits for that, ahead of its listener: chunks are a patch long and a step takes a fraction of one)."""
        self._end_deferred()
        self._newcomers_step(self._admit())
        self._between_steps()
        if not self.scheduler.running:
            return
        started = time.perf_counter()
        batch = self._launch(0, self.scheduler.step_rows())
        if self.scheduler.allow_newcomers_first and not self._inbox.empty() and self._take_commands(block=False):
            aside = time.perf_counter()
            self._newcomers_step(self._admit())
            started += time.perf_counter() - aside  # the newcomers' own step: not the batch's time
        if batch is not None:
            self._finish(batch)
            self.scheduler.stepped(time.perf_counter() - started)
        self._between_steps()

    def _take_commands(self, block: bool) -> bool:
        """Take in the requests added since the last look; False once the engine is closing."""
        while not self._closing:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            if command is _STOP:
                self._closing = True
            elif isinstance(command, Sequence) and not command.cancelled and command.status is Status.WAITING:
                self.scheduler.add(command)  # a new request, or a parked one whose prompt is ready
        return not self._closing

    def _between_steps(self) -> None:
        """Cancelled requests retired, the running ones back in slots 0..n-1 and the live ones below the background
        ones, their state moved along."""
        for sequence in self.scheduler.cancelled():
            self._retire(sequence)
        for source, target in self.scheduler.compact():
            self.runner.move(source, target)
            self.decoder.move(source, target)
        for one, other in self.scheduler.partition():
            self.runner.swap(one, other)
            self.decoder.swap(one, other)

    def _admit(self) -> list[Sequence]:
        """Admit waiting requests into free slots and start them, take in the requests that arrived meanwhile
        and do the same until none is admitted, then prefill every sentence that starts, in one pass: a burst
        that arrives over a few milliseconds starts in one step with one prefill, not one per arrival (bounded
        by the free slots). The requests admitted that run."""
        joined: list[Sequence] = []
        while admitted := self.scheduler.admit():
            for sequence in admitted:
                self._guarded(sequence, self._start, sequence)
            joined += admitted
            if not self._take_commands(block=False):
                break
        self._prefill()
        return [sequence for sequence in joined if sequence.status is Status.RUNNING]

    def _newcomers_step(self, fresh: list[Sequence]) -> None:
        """The first step of requests that just joined, over their slots only (the batch's last), where the
        scheduler says they go first; a sentence that ended in it is prefilled before the batch's step."""
        if (first := self.scheduler.newcomers_first(fresh)) is None:
            return
        if (step := self._launch(first)) is not None:
            self._finish(step)
        self._prefill()

    def _launch(self, first: int, end: int | None = None) -> Launched | None:
        """A step's first half: the model call for the running requests in slots ``first``..``end`` (on a GPU,
        queued)."""
        sequences = self.scheduler.running[first:end]
        try:
            rows, held = [sequence.row() for sequence in sequences], len(self.scheduler.running)
            return Launched(sequences, first, self.runner.step(rows, first, held=held))
        except Exception as exc:  # a failure of the shared step fails its rows, not the replica
            logger.exception("batched step failed for %d requests", len(sequences))
            self._fail_all(sequences, exc)
            return None

    def _finish(self, step: Launched) -> None:
        """A step's second half: the VAE stage, then post-processing. The rows whose call takes one patch are
        decoded together and their audio sent before the calls of the rows whose held patches are due (a
        sentence's end, a group) run, each followed by that row's post-processing."""
        sequences, output = step.sequences, step.output
        whole = step.first == 0 and len(sequences) == len(self.scheduler.running)  # no newcomer after its rows
        try:
            audio, due = self.vae.decode_new(sequences, output.latents, step.first, whole)  # before any wait
            stop = output.stop.tolist()
        except Exception as exc:
            logger.exception("batched step failed for %d requests", len(sequences))
            self._fail_all(sequences, exc)
            return
        outcomes = {
            row: outcome
            for row, sequence in enumerate(sequences)
            if (outcome := self._guarded(sequence, self.postprocessor.outcome, sequence, stop[row])) is not None
        }
        held = [
            row
            for row, outcome in outcomes.items()
            if outcome is not Outcome.RETRIES and (row in due or (outcome is Outcome.ENDS and sequences[row].latents))
        ]
        # a group waits a step only where that changes no bits; a sentence's end keeps its patches however late
        movable = [row for row in held if outcomes[row] is Outcome.ENDS or not self.vae.batch_invariant]
        now = self.scheduler.held_decodes([sequences[row] for row in movable])
        for row in [row for row in movable if sequences[row] not in now]:  # a patch more next step, or its end later
            sequences[row].ending = outcomes[row] is Outcome.ENDS
            held.remove(row)
        for row, outcome in outcomes.items():
            if row not in held and not sequences[row].ending:
                self._guarded(sequences[row], self._postprocess, sequences[row], outcome, audio.get(row))
        for row in held:
            self._guarded(sequences[row], self._postprocess, sequences[row], outcomes[row], None, True)

    def _end_deferred(self) -> None:
        """The background requests whose sentence ended in an earlier step with their held patches left for a
        step with time for them (``Scheduler.held_decodes``): as many as this step has time for."""
        for sequence in self.scheduler.held_decodes(
            [sequence for sequence in self.scheduler.running if sequence.ending]
        ):
            sequence.ending = False
            self._guarded(sequence, self._postprocess, sequence, Outcome.ENDS, None, True)

    def _postprocess(self, sequence: Sequence, outcome: Outcome, piece: np.ndarray | None, held: bool = False) -> None:
        """One request's step: ``piece`` of audio, or with ``held`` its held patches through the VAE now."""
        piece = self.vae.decode_held(sequence) if held else piece
        following = self.postprocessor.emit(sequence, piece, outcome)
        if following is not GENERATING:
            self._next_sentence(sequence, following, may_yield=True)

    def _start(self, sequence: Sequence) -> None:
        if sequence.plan is not None:  # admitted again: its next sentence is set up, or its prompt is now ready
            if sequence.inputs is None:
                self._next_sentence(sequence, sequence.sentence)
            else:
                self.scheduler.start_sentence(sequence)
            return
        sequence.started()
        sequence.plan = self.runtime.utterance(sequence.request, self.prompt_workers.deferral(sequence.background))
        self._next_sentence(sequence, next(sequence.plan, None))

    def _next_sentence(self, sequence: Sequence, sentence: Sentence | None, may_yield: bool = False) -> None:
        """Set the request up to generate the sentence (prefilled before the next step), or finish it. A sentence
        whose prompt is still being encoded parks the request until it is (``prompt_workers.py``)."""
        if sentence is None:
            self._complete(sequence)
            return
        if isinstance(sentence.prompt, Future):
            if not sentence.prompt.done():
                sequence.sentence, sequence.inputs = sentence, None
                self.scheduler.park(sequence)
                sentence.prompt.add_done_callback(lambda _: self._inbox.put(sequence))
                return
            sentence = dataclasses.replace(sentence, prompt=sentence.prompt.result())  # its error fails the request
        sequence.sentence = sentence
        sequence.attempts += 1
        if sentence.turn and sequence.attempts == 1 and sequence.request.seed is not None:
            sequence.generator.manual_seed(sequence.request.seed)  # a turn: as its voice alone says it (plan.py)
        inputs = self.runtime.model_inputs(sentence, sequence.request)
        room = self.runner.kv_length - inputs.text.shape[1]  # positions left in the slot for generated steps
        if room <= 0:
            raise InvalidField("the text and its prompt are longer than a KV slot holds (kv_cache_length)", "text")
        sequence.inputs = dataclasses.replace(inputs, max_len=min(inputs.max_len, room))
        self.scheduler.start_sentence(sequence, may_yield)

    def _prefill(self) -> None:
        """Prefill every request that starts a sentence, together; each alone if that fails, so that a
        request whose inputs break the pack fails alone."""
        pending = self.scheduler.to_prefill()
        if len(pending) > 1:
            try:
                lengths = self._prefilled(pending)
            except Exception:
                logger.warning("prefill of %d requests together failed: each alone", len(pending), exc_info=True)
            else:
                for sequence, length in zip(pending, lengths, strict=True):
                    self._guarded(sequence, self._place, sequence, length)
                return
        for sequence in pending:
            self._guarded(sequence, lambda alone: self._place(alone, self._prefilled([alone])[0]), sequence)

    def _prefilled(self, sequences: list[Sequence]) -> list[int]:
        """The sequences' sentences prefilled together into their slots, their slots' VAE state cleared: each
        one's length."""
        slots = [sequence.slot for sequence in sequences]
        batch = [sequence.inputs for sequence in sequences]
        lengths = self.runner.prefill(batch, slots, [sequence.adapter for sequence in sequences])  # type: ignore[arg-type]
        self.decoder.reset(slots)
        return lengths

    def _place(self, sequence: Sequence, length: int) -> None:
        """The prefilled sentence (its slots are ready): its first step comes next."""
        if (context := sequence.inputs.context()) is not None:  # type: ignore[union-attr]
            self.decoder.decode(context, [sequence.slot])
        sequence.step, sequence.position = 0, length
        sequence.pieces, sequence.latents = [], []

    def _complete(self, sequence: Sequence) -> None:
        if len(tail := sequence.crossfade.flush()):
            sequence.deliver(tail)
        self.postprocessor.segment_ended(sequence, sequence.crossfade.emitted)
        sequence.deliver(END)
        self._retire(sequence)

    def _fail_all(self, sequences: list[Sequence], error: BaseException) -> None:
        for sequence in sequences:
            self._fail(sequence, error)

    def _fail(self, sequence: Sequence, error: BaseException) -> None:
        sequence.deliver(self.liveness.failure(error))  # a device error: recorded, and a 503 for the client
        self._retire(sequence)

    def _retire(self, sequence: Sequence) -> None:
        self.scheduler.retire(sequence)
        if sequence.plan is not None:
            sequence.plan.close()

    def _guarded(self, sequence: Sequence, work: Callable[..., T], *arguments: Any) -> T | None:
        """Run one request's own work: its result, or None where it failed, which fails that request alone."""
        try:
            return work(*arguments)
        except Exception as exc:  # noqa: BLE001 - handed to the request's consumer, which re-raises it
            if sequence.status is not Status.FINISHED:
                self._fail(sequence, exc)
            return None
