"""One loaded ``voxcpm.VoxCPM``: what both engines start from and do with it the same way.

Both engines (``reference_engine.py``: voxcpm's own generation loop, one request at a time; ``batched/``:
many requests stepped together) share everything but the generation loop: loading, the model's facts and
capabilities, text clean-up, encoded prompts (``prompts.py``), the long-text plan (``plan.py``), the model
inputs voxcpm builds for a sentence (``inputs.py``), and the incremental VAE decoder (``vae.py``). No
asyncio and no threads here: the engine that owns the runtime decides on which one thread it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.audio.seams import SEAM_SECONDS
from serve_app.audio.stretch import check_speed
from serve_app.config import ModelConfig
from serve_app.errors import BadRequest
from serve_app.model import adapters, capabilities, inputs, plan
from serve_app.model.adapters import AdapterCache, LoadedAdapter
from serve_app.model.decode_grouping import DecodeGrouping
from serve_app.model.inputs import ModelInputs
from serve_app.model.plan import Sentence, Utterance
from serve_app.model.prompts import PromptEncoder
from serve_app.model.types import ModelInfo, PromptAudio, Span, SynthesisRequest
from serve_app.model.vae import StreamingVAEDecoder, fuse_weight_norm, reserve_kernel_cache
from serve_app.model.weights import Weights, public_source
from serve_app.model.weights import resolve as resolve_weights
from serve_app.store.adapter_store import AdapterStore, declared_id
from serve_app.store.voice_store import VoiceStore
from serve_app.text.sentences import split_sentences

logger = logging.getLogger("ray.serve")

WARMUP_TEXT = "Hello, this is a warm-up sentence."
MAX_PAUSE_S = 10.0  # a span's pause: SSML's longest break (W3C leaves it open; the big services cap it at 10 s)
TOKENIZED_TEXTS = 256  # texts whose tokens a replica keeps (a sentence is tokenized 7 times as it starts)
# How a prompt's encoding runs: handed the work, answers its result (or a future of it).
Deferral = Callable[[Callable[[], Any]], Any]


def _at_once(work: Callable[[], Any]) -> Any:
    return work()


class VoxCPMRuntime:
    """One ``voxcpm.VoxCPM`` instance, its facts and its encoded prompts."""

    def __init__(
        self,
        tts: Any,
        config: ModelConfig,
        voices: VoiceStore | None = None,
        weights: Weights | None = None,
        adapter_store: AdapterStore | None = None,
    ) -> None:
        self.tts = tts
        self.model = tts.tts_model
        fuse_weight_norm(self.model.audio_vae)
        # voxcpm tokenizes a sentence's text three times while it builds the sentence's inputs, and our checks
        # do so too: each text once, kept a while.
        # Tuples: the same tokens go to every caller, and none can change them for the next.
        self.model.text_tokenizer = functools.lru_cache(maxsize=TOKENIZED_TEXTS)(
            lambda text, tokenize=self.model.text_tokenizer: tuple(tokenize(text))
        )
        self.v2 = type(self.model).__name__ == "VoxCPM2Model"
        architecture = "voxcpm2" if self.v2 else "voxcpm"
        self.info = ModelInfo(
            name=config.name,
            source=public_source(weights.source if weights else config.source),
            architecture=architecture,
            sample_rate=int(self.model.sample_rate),
            prompt_sample_rate=int(getattr(self.model, "_encode_sample_rate", self.model.sample_rate)),
            device=str(self.model.device),
            denoiser=tts.denoiser is not None,
            engine=config.engine,
            synthetic=weights.synthetic if weights else False,
            capabilities=capabilities.BY_ARCHITECTURE[architecture],
            lora=config.lora.model_dump() if config.lora else None,
        )
        self.prompts = PromptEncoder(self.model, self.info, tts.denoiser, voices, config.prompt_cache_size)
        self.batch_invariant = config.batch_invariant
        self._decode_patches = config.decode_patches
        # Samples per generation step at the output rate, and the crossfade between sentences.
        decode_hop = getattr(self.model, "_decode_chunk_size", self.model.chunk_size)
        self.step_samples = int(self.model.patch_size * decode_hop)
        self.seam_samples = int(SEAM_SECONDS * self.info.sample_rate)
        self._adapter_store = adapter_store
        self.adapters = self._adapter_cache(config) if config.lora else None

    def _adapter_cache(self, config: ModelConfig) -> AdapterCache:
        """The adapters this replica keeps, checked against the LoRA layers voxcpm built; the declared ones read."""
        assert config.lora is not None
        from voxcpm.modules.layers.lora import LoRALinear

        layer = next(module for module in self.model.modules() if isinstance(module, LoRALinear))
        declared = {declared_id(config.name, name): Path(path) for name, path in config.adapters.items()}
        cache = AdapterCache(
            config.lora, adapters.layout(self.model), layer.scaling.dtype, config.max_resident_adapters, declared
        )
        cache.pin_declared()
        return cache

    def adapter(self, request: SynthesisRequest) -> LoadedAdapter | None:
        """The request's adapter's weights (read unless loaded: any thread), None for the base model."""
        wanted = request.adapter
        if wanted is None:
            return None
        if self.adapters is None:
            raise BadRequest(f"model {self.info.name!r} serves no adapters (its `lora:` is null)", "adapter")
        if wanted.model != self.info.name:
            raise BadRequest(
                f"adapter {wanted.name!r} belongs to model {wanted.model!r}, not {self.info.name!r}", "adapter"
            )
        path = Path(wanted.file) if self._adapter_store is None else self._adapter_store.weights_path(wanted)
        return self.adapters.get(wanted, path)

    @classmethod
    def load(
        cls, config: ModelConfig, voices: VoiceStore | None = None, adapter_store: AdapterStore | None = None
    ) -> VoxCPMRuntime:
        from voxcpm import VoxCPM

        if config.batch_invariant:
            # Process-wide: oneDNN picks its bf16 GEMM kernels by batch size; PyTorch's own give the same
            # bits for a row whatever the batch (slower on CPU). Both engines honour it, so they compare.
            torch.backends.mkldnn.enabled = False
        reserve_kernel_cache(config.max_batch_size)
        weights = resolve_weights(config)
        tts = VoxCPM.from_pretrained(
            weights.path,
            load_denoiser=config.load_denoiser,
            zipenhancer_model_id=config.denoiser_model,
            cache_dir=config.cache_dir,
            optimize=config.optimize and config.engine == "voxcpm",  # the batched engine has its own graphs
            device=None if config.device == "auto" else config.device,
            lora_config=adapters.lora_config(config.lora) if config.lora else None,
        )
        return cls(tts, config, voices, weights, adapter_store)

    def close(self) -> None:
        self.prompts.close()

    def warmup_request(self) -> SynthesisRequest:
        """One short generation from a prompt, so that no user pays for lazy initialisation
        (torch kernels, and for VoxCPM 1.x the FFmpeg libraries that read prompt files: ~1 s)."""
        rate = self.info.prompt_sample_rate
        silence = PromptAudio(samples=np.zeros(rate // 2, dtype=np.float32), sample_rate=rate, text="warm up")
        return SynthesisRequest(text=WARMUP_TEXT, prompt=silence, max_len=8, retry_badcase=False)

    def decoder(self, slots: int) -> StreamingVAEDecoder:
        return StreamingVAEDecoder(self.model.audio_vae, slots, self.batch_invariant)

    def decode_grouping(self, streaming: bool) -> DecodeGrouping:
        """A request's count of patches through the VAE, and how many its next call takes."""
        return DecodeGrouping(self._decode_patches, streaming)

    def utterance(self, request: SynthesisRequest, defer: Deferral = _at_once) -> Utterance:
        """The request's plan (``plan.py``), each span checked against what this model can do. ``defer`` runs each
        prompt's encoding: at once, or elsewhere (the batched engine's prompt workers: its sentences then carry a
        future); a prompt encoded before comes from the cache at once either way."""
        if not self.speaks(request.text):
            raise BadRequest(f"text has nothing {self.info.name} can speak (its tokenizer keeps none of it)", "text")
        spans = request.spoken
        parts = [self._part(request, span, defer) for span in spans]
        for index, span in enumerate(spans):  # a turn: a span whose saved voice is not the one before's
            if span.voice is not None and (index == 0 or spans[index - 1].voice != span.voice):
                parts[index] = dataclasses.replace(parts[index], turn=True)
        own = functools.partial(self.prompts.encode, reference=None, denoise=False)
        return plan.utterance(request, parts, self.info, lambda audio: defer(functools.partial(own, audio)))

    def _part(self, request: SynthesisRequest, span: Span, defer: Deferral) -> plan.Part:
        """A span as the plan takes it: its sentences split by the one rule (``text/sentences.py``; a sentence the
        WebSocket cut is not cut again) and cleaned, in its own saved voice or the request's, checked against
        what this model can do and encoded (a span with nothing to say is only its pause). A designed voice
        brings its description where the request has none, so that it stays one speaker. Its rate and pause are
        checked here too, before any audio: markup names them in ``text``."""
        check_speed(span.speed, "text")
        if not 0 <= span.pause_after <= MAX_PAUSE_S:
            raise BadRequest(f"a pause must be 0 to {MAX_PAUSE_S:g} seconds (got {span.pause_after:g})", "text")
        pause = round(span.pause_after * self.info.sample_rate)
        texts = [span.text] if request.one_sentence else split_sentences(span.text)
        cleaned = (self._clean_text(text, request.normalize) for text in texts)
        if not (sentences := [sentence for sentence in cleaned if self.speaks(sentence)]):
            return plan.Part([], None, None, pause_after=pause)
        voiced = (
            request
            if span.voice is None
            else dataclasses.replace(request, voice=span.voice, prompt=None, reference=None)
        )
        if self.v2 and voiced.voice is not None and not voiced.instructions:
            voiced = dataclasses.replace(voiced, instructions=voiced.voice.description)
        capabilities.check(self.info, voiced)
        prompt = None
        if voiced.prompt or voiced.voice or voiced.reference:
            prompt = self.prompts.cached(voiced)
            prompt = defer(functools.partial(self.prompts.encoded, voiced)) if prompt is None else prompt
        return plan.Part(
            sentences=sentences,
            prompt=prompt,
            instructions=voiced.instructions,
            speed=span.speed,
            pause_after=pause,
        )

    def generation(
        self, sentence: Sentence, request: SynthesisRequest, streaming: bool, retry: bool = False
    ) -> Iterator[tuple[Any, Any, Any]]:
        return inputs.generation(self.model, sentence, request, streaming, retry)

    def model_inputs(self, sentence: Sentence, request: SynthesisRequest) -> ModelInputs:
        return inputs.model_inputs(self.model, sentence, request)

    def text_tokens(self, text: str) -> int:
        return len(self.model.text_tokenizer(text))

    def too_long(self, request: SynthesisRequest, text: str, patches: int) -> bool:
        """voxcpm's bad-case check (``retry_badcase``): the sentence's ``patches`` (voxcpm's count: VoxCPM 1.x's
        includes the prompt patches its decode starts from) reached ``ratio`` x its text tokens."""
        return patches >= self.text_tokens(text) * request.retry_badcase_ratio_threshold

    def speaks(self, text: str) -> bool:
        """Whether this model's tokenizer keeps anything of ``text`` (voxcpm divides by the token count)."""
        return bool(self.model.text_tokenizer(text))

    def _clean_text(self, text: str, normalize: bool) -> str:
        """What ``VoxCPM._generate`` does to the text: one line, single spaces, optionally normalized. Done to
        each sentence after the split, so that a newline, which ends a sentence, still does."""
        text = re.sub(r"\s+", " ", text.replace("\n", " "))
        if normalize:
            if self.tts.text_normalizer is None:
                from voxcpm.utils.text_normalize import TextNormalizer

                self.tts.text_normalizer = TextNormalizer()
            try:
                text = self.tts.text_normalizer.normalize(text)
            except Exception:  # noqa: BLE001 - wetext asserts on some inputs ("0¢"): the text is then read as written
                logger.warning(
                    "the text normalizer failed on a sentence (%d characters); it is read as written", len(text)
                )
        return text
