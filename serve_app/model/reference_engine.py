"""The reference engine: voxcpm's own generation loop, one request at a time, on a thread it owns.

A ``VoxCPM`` instance keeps one static KV cache, so generations run one after another on a single
worker thread, in arrival order, while the replica's event loop stays free (``thread_stream.py``:
cancellation between chunks, bounded buffering). Streams decode their new patches with the
incremental VAE decoder (``vae.py``), a few at a time once the listener has audio in hand
(``decode_grouping.py``), instead of voxcpm's windowed re-decode (VoxCPM 1.x) or its decoder that
patches the shared modules (VoxCPM2); the non-streaming path is voxcpm's own, with
``retry_badcase``. A request's LoRA adapter is copied into voxcpm's own LoRA layers before it runs.
This is the engine the batched one is measured against.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from serve_app.audio.seams import Crossfader
from serve_app.config import ModelConfig
from serve_app.model.adapters import VoxCPMLoRA
from serve_app.model.decode_grouping import DecodeGrouping
from serve_app.model.engine import RuntimeEngine, Started, joined
from serve_app.model.inputs import latents
from serve_app.model.liveness import Liveness
from serve_app.model.plan import Sentence, Spoken
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.span_audio import SpanAudio
from serve_app.model.thread_stream import iterate_in_thread
from serve_app.model.types import Chunk, SegmentEnd, SynthesisRequest
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.voice_store import VoiceStore

logger = logging.getLogger(__name__)

MAX_BUFFERED_CHUNKS = 32  # chunks a generation may run ahead of its consumer before it pauses
_SLOT = [0]  # the decoder's one slot: one generation at a time


class ReferenceEngine(RuntimeEngine):
    def __init__(self, runtime: VoxCPMRuntime, executor: ThreadPoolExecutor, max_step_s: float) -> None:
        self.runtime = runtime
        self.info = runtime.info
        self._executor = executor
        self.decoder = runtime.decoder(1)
        self.lora = VoxCPMLoRA(runtime.model) if runtime.adapters is not None else None
        self.liveness = Liveness(max_step_s)  # of the generation thread, where the engine is built
        self.too_long = False  # the sentence just generated failed the bad-case check (one generation at a time)

    @classmethod
    def load(
        cls, config: ModelConfig, voices: VoiceStore | None = None, adapters: AdapterStore | None = None
    ) -> ReferenceEngine:
        """Loaded and warmed up on the generation thread, where its generations will run (``engine.py``)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxcpm-generate")
        runtime = executor.submit(VoxCPMRuntime.load, config, voices, adapters).result()
        engine = executor.submit(cls, runtime, executor, config.max_step_s).result()
        if config.warmup:
            executor.submit(lambda: joined(engine.generate(engine.runtime.warmup_request(), streaming=True))).result()
            engine.runtime.prompts.cache.clear()
        logger.info("loaded %s", engine.info)
        return engine

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()

    def _generation(self, request: SynthesisRequest, started: Started, streaming: bool) -> AsyncIterator[Chunk]:
        def produce() -> Iterator[Chunk]:
            started()
            yield from self.liveness.timed(self.generate(request, streaming))  # each chunk's work: a step

        return iterate_in_thread(produce, self._executor, MAX_BUFFERED_CHUNKS, self.liveness)

    def generate(self, request: SynthesisRequest, streaming: bool) -> Iterator[Chunk]:
        """The utterance (synchronously, on the caller's thread): a chunk per step when streaming, else a
        piece per sentence; sentences crossfaded into one signal, with where each ends if the request asks
        (``segments``). Closing the iterator stops it."""
        crossfade = Crossfader(self.runtime.seam_samples)
        ended: Sentence | None = None  # spoken, its end not yet told
        too_long = False  # its bad-case verdict
        told = 0  # sentences whose end was told
        for piece in self._spoken(request, streaming):
            if isinstance(piece, Sentence):
                ended, too_long = piece, self.too_long
                crossfade.next_segment()
                continue
            if ended is not None:  # before the next sentence's audio: where the crossfade meets it
                if request.segments:
                    yield SegmentEnd(told, ended.text, crossfade.boundary(), too_long)
                ended, told = None, told + 1
            if len(playable := crossfade.feed(piece)):
                yield playable
        if len(tail := crossfade.flush()):
            yield tail
        if ended is not None and request.segments:
            yield SegmentEnd(told, ended.text, crossfade.emitted, too_long)

    def _spoken(self, request: SynthesisRequest, streaming: bool) -> Iterator[np.ndarray | Sentence]:
        """Each sentence's audio in turn, as its span asks (``span_audio.py``), then the sentence itself."""
        if self.lora is not None:
            self.lora.use(self.runtime.adapter(request))
        if request.seed is not None:
            torch.manual_seed(request.seed)  # voxcpm draws its noise from the global generator
        plan = self.runtime.utterance(request)
        grouping = self.runtime.decode_grouping(streaming)
        try:
            sentence = next(plan, None)
            while sentence is not None:
                if sentence.turn and request.seed is not None:
                    torch.manual_seed(request.seed)  # a turn: as its voice alone says it with the seed
                pieces: list[np.ndarray] = []
                said = SpanAudio(sentence, self.info.sample_rate, self.runtime.seam_samples)
                for piece in self._sentence(sentence, request, grouping):
                    pieces.append(piece)
                    if len(out := said.feed(piece)):
                        yield out
                if len(tail := said.finish()):
                    yield tail
                audio = joined(pieces)
                yield sentence
                try:
                    sentence = plan.send(Spoken(audio, round(len(audio) / self.runtime.step_samples)))
                except StopIteration:
                    return
        finally:
            plan.close()

    def _sentence(
        self, sentence: Sentence, request: SynthesisRequest, grouping: DecodeGrouping
    ) -> Iterator[np.ndarray]:
        self.too_long = False  # checked where voxcpm retries: the non-streaming path
        if not grouping.streaming:
            yield self._whole(sentence, request)
            return
        model = self.runtime.model
        inputs = self.runtime.model_inputs(sentence, request)
        self.decoder.reset(_SLOT)
        if (context := inputs.context()) is not None:
            self.decoder.decode(context, _SLOT)  # the state the prompt leaves; its audio is not ours
        steps = model._inference(
            inputs.text,
            inputs.text_mask,
            inputs.feat,
            inputs.feat_mask,
            min_len=inputs.min_len,
            max_len=inputs.max_len,
            inference_timesteps=inputs.inference_timesteps,
            cfg_value=inputs.cfg_value,
            streaming=True,
        )
        pending: list[torch.Tensor] = []
        try:
            for output in steps:  # (window, patches so far[, context]); the newest patch is the step's
                pending.append(latents(output[1][-1]))
                if grouping.due(len(pending)):
                    yield self._decoded(pending, grouping)
                    pending = []
            if pending:
                yield self._decoded(pending, grouping)
        finally:
            steps.close()

    def _decoded(self, pending: list[torch.Tensor], grouping: DecodeGrouping) -> np.ndarray:
        """The stream's pending patches through the VAE in one call, continuing its state."""
        grouping.decoded(len(pending))
        return self.decoder.decode_patches(pending, _SLOT[0])

    def _whole(self, sentence: Sentence, request: SynthesisRequest) -> np.ndarray:
        """voxcpm's non-streaming generation of one sentence, whole-utterance decode and retry_badcase; whether
        its last try still failed the bad-case check, on voxcpm's own count of its patches."""
        generation = self.runtime.generation(sentence, request, streaming=False, retry=True)
        pieces: list[np.ndarray] = []
        try:
            for samples, _, patches in generation:
                pieces.append(samples.squeeze(0).cpu().numpy())
                self.too_long = self.runtime.too_long(request, sentence.text, patches.shape[0])
            return joined(pieces)
        finally:
            generation.close()
