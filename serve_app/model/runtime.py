"""One loaded ``voxcpm.VoxCPM`` and what every engine does with it the same way.

Both engines (``reference.py``: voxcpm's own generation loop, one request at a time; ``batched/``: many
requests stepped together) share everything but the generation loop: loading, the model's facts,
refusing what a model cannot do, text clean-up, encoded prompts (kept by content in a cache, so a
client that re-sends the same reference pays for encoding once), the long-text plan (one sentence at a
time, in one voice, within one step budget), the model inputs voxcpm builds for a sentence, and the
incremental VAE decoder. No asyncio and no threads here: the engine that owns the runtime decides on
which one thread it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from voxcpm.cli import build_final_text

from serve_app.audio.reference import resample
from serve_app.config import ModelConfig
from serve_app.errors import BadRequest, InvalidField, NotFound
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest
from serve_app.model.vae import StreamingVAEDecoder, fuse_weight_norm, reserve_kernel_cache
from serve_app.text import split_sentences
from serve_app.voices import Voice, VoiceStore
from serve_app.weights import Weights, public_source
from serve_app.weights import resolve as resolve_weights

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, this is a warm-up sentence."
SEAM_SECONDS = 0.01  # crossfade between sentences generated separately
RETRY_ARGUMENTS = ("retry_badcase", "retry_badcase_max_times", "retry_badcase_ratio_threshold")
TOKENIZED_TEXTS = 256  # texts whose tokens a replica keeps (a sentence is tokenized 7 times as it starts)


class PromptCache:
    """Encoded prompts by content (each recording's audio, rate and transcript, denoise), least recently used
    dropped first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(prompt: PromptAudio | None, reference: PromptAudio | None, denoise: bool) -> str:
        """Keyed on both recordings: a reference with one continuation prompt is another prompt than with another."""
        digest = hashlib.sha256(f"{denoise}".encode())
        for role, audio in (("prompt", prompt), ("reference", reference)):
            if audio is not None:
                digest.update(f"|{role}|{audio.sample_rate}|{audio.text or ''}|".encode())
                digest.update(np.ascontiguousarray(audio.samples, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def put(self, key: str, entry: Any) -> None:
        if self._capacity <= 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Sentence:
    """One sentence of an utterance to generate: the text, the voice's encoded prompt, its step limits."""

    text: str
    prompt: Any  # voxcpm's prompt cache dict, or None
    min_len: int
    max_len: int  # what is left of the request's step budget


@dataclass(frozen=True)
class Spoken:
    """What generating a sentence gave: its audio (at the output rate) and how many steps it took."""

    audio: np.ndarray
    steps: int


# The long-text plan: yields each sentence to generate, is sent what it gave (see VoxCPMRuntime.utterance).
Utterance = Generator[Sentence, Spoken, None]


@dataclass(frozen=True)
class ModelInputs:
    """voxcpm's inputs for one sentence (batch of one), as its ``_generate_with_prompt_cache`` builds them."""

    text: torch.Tensor
    text_mask: torch.Tensor
    feat: torch.Tensor
    feat_mask: torch.Tensor
    min_len: int
    max_len: int  # the request's budget, capped by voxcpm at 6 x text tokens + 10
    inference_timesteps: int
    cfg_value: float
    context_patches: int  # prompt patches that precede generation (VAE warm-up, streaming_prefix_len - 1)

    def context(self) -> torch.Tensor | None:
        """The prompt's last patches as VAE latents (1, latent_dim, frames): voxcpm decodes a continuation with
        them in front (and cuts their audio off), so the decoder starts in the state the prompt left."""
        if not self.context_patches:
            return None
        audio_positions = self.feat_mask[0].nonzero(as_tuple=True)[0][-self.context_patches :]
        return latents(self.feat[:, audio_positions])


def latents(patches: torch.Tensor) -> torch.Tensor:
    """voxcpm's patches (rows, steps, patch_size, latent_dim) as VAE input (rows, latent_dim, steps x patch_size)."""
    return patches.flatten(1, 2).transpose(1, 2)


class VoxCPMRuntime:
    """One ``voxcpm.VoxCPM`` instance, its encoded prompts and the files it needs for them."""

    def __init__(
        self, tts: Any, config: ModelConfig, voices: VoiceStore | None = None, weights: Weights | None = None
    ) -> None:
        self.tts = tts
        self.model = tts.tts_model
        fuse_weight_norm(self.model.audio_vae)
        # voxcpm tokenizes a sentence's text three times while it builds the sentence's inputs, and our checks
        # do so too (7 calls of ~0.05 ms per request start on the tiny model): each text once, kept a while.
        # Tuples: the same tokens go to every caller, and none can change them for the next.
        self.model.text_tokenizer = functools.lru_cache(maxsize=TOKENIZED_TEXTS)(
            lambda text, tokenize=self.model.text_tokenizer: tuple(tokenize(text))
        )
        self._voices = voices
        self.v2 = type(self.model).__name__ == "VoxCPM2Model"
        self.info = ModelInfo(
            name=config.name,
            source=public_source(weights.source if weights else config.source),
            architecture="voxcpm2" if self.v2 else "voxcpm",
            sample_rate=int(self.model.sample_rate),
            prompt_sample_rate=int(getattr(self.model, "_encode_sample_rate", self.model.sample_rate)),
            device=str(self.model.device),
            denoiser=tts.denoiser is not None,
            engine=config.engine,
            synthetic=weights.synthetic if weights else False,
        )
        self.prompts = PromptCache(config.prompt_cache_size)
        self._batch_invariant = config.batch_invariant
        # Samples per generation step at the output rate, and the crossfade between sentences.
        decode_hop = getattr(self.model, "_decode_chunk_size", self.model.chunk_size)
        self.step_samples = int(self.model.patch_size * decode_hop)
        self.seam_samples = int(SEAM_SECONDS * self.info.sample_rate)
        # Prompt audio reaches voxcpm as a file path: a private directory, random names, always removed.
        self._prompt_dir = Path(tempfile.mkdtemp(prefix=f"voxcpm-prompts-{os.getpid()}-"))  # pid: whose it is

    @classmethod
    def load(cls, config: ModelConfig, voices: VoiceStore | None = None) -> VoxCPMRuntime:
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
        )
        return cls(tts, config, voices, weights)

    def close(self) -> None:
        shutil.rmtree(self._prompt_dir, ignore_errors=True)

    def warmup_request(self) -> SynthesisRequest:
        """One short generation from a prompt, so that no user pays for lazy initialisation
        (torch kernels, and for VoxCPM 1.x the FFmpeg libraries that read prompt files: ~1 s)."""
        rate = self.info.prompt_sample_rate
        silence = PromptAudio(samples=np.zeros(rate // 2, dtype=np.float32), sample_rate=rate, text="warm up")
        return SynthesisRequest(text=WARMUP_TEXT, prompt=silence, max_len=8, retry_badcase=False)

    def decoder(self, slots: int) -> StreamingVAEDecoder:
        return StreamingVAEDecoder(self.model.audio_vae, slots, self._batch_invariant)

    def utterance(self, request: SynthesisRequest) -> Utterance:
        """The request's sentences in turn, each sent back what it gave, in one voice.

        ``max_len`` is a budget of generation steps for the whole text. Without a reference, the first
        sentence's own audio becomes the prompt of the rest, so the voice stays the same: as a continuation
        prompt, or with instructions (VoxCPM2) as an isolated reference, because voxcpm reads a description
        only at the start of the text and a continuation puts the prompt's transcript there. Every sentence
        carries the description, as voxcpm's CLI prefixes it (``build_final_text``); a designed voice's
        description when the request has none.
        """
        if self.v2 and request.voice is not None and not request.instructions:
            request = dataclasses.replace(request, instructions=request.voice.description)
        self.check(request)
        recorded = request.prompt or request.voice or request.reference
        prompt = self._encoded_prompt(request) if recorded else None
        sentences = [sentence for sentence in split_sentences(self._clean_text(request)) if self.speaks(sentence)]
        description = " ".join((request.instructions or "").split())  # one line, as the text is
        budget = request.max_len
        for index, text in enumerate(sentences):
            if budget <= 0:
                return
            spoken = yield Sentence(build_final_text(text, description), prompt, min(request.min_len, budget), budget)
            budget -= spoken.steps
            if prompt is None and index + 1 < len(sentences):
                own = PromptAudio(
                    samples=resample(spoken.audio, self.info.sample_rate, self.info.prompt_sample_rate),
                    sample_rate=self.info.prompt_sample_rate,
                    text=None if request.instructions else text,  # no transcript: an isolated reference
                )
                prompt = self._encode(own, None, denoise=False)

    def generation(
        self, sentence: Sentence, request: SynthesisRequest, streaming: bool, retry: bool = False
    ) -> Iterator[tuple[Any, Any, Any]]:
        """voxcpm's own generation of one sentence (``_generate_with_prompt_cache``); ``retry``: with the
        request's retry_badcase settings (voxcpm cannot retry what it has streamed)."""
        retries = {name: getattr(request, name) for name in RETRY_ARGUMENTS} if retry else {"retry_badcase": False}
        return self.model._generate_with_prompt_cache(
            target_text=sentence.text,
            prompt_cache=sentence.prompt,
            min_len=sentence.min_len,
            max_len=sentence.max_len,
            inference_timesteps=request.inference_timesteps,
            cfg_value=request.cfg_value,
            streaming=streaming,
            **retries,
        )

    def model_inputs(self, sentence: Sentence, request: SynthesisRequest) -> ModelInputs:
        """The inputs voxcpm's ``_generate_with_prompt_cache`` gives its ``_inference`` for this sentence.

        voxcpm builds them (tokens, masks, prompt features for every prompt mode of either architecture,
        the length cap) inside that method, interleaved with its generation loop; standing in for
        ``_inference`` for one call takes them as voxcpm made them, so neither engine re-implements them.
        """
        captured: dict[str, Any] = {}

        def capture(text: Any, text_mask: Any, feat: Any, feat_mask: Any, **options: Any) -> Iterator[Any]:
            captured.update(text=text, text_mask=text_mask, feat=feat, feat_mask=feat_mask, **options)
            return iter(())

        self.model._inference = capture
        try:
            for _ in self.generation(sentence, request, streaming=True):
                pass
        finally:
            del self.model._inference
        feat_mask = captured["feat_mask"]
        continues_audio = bool(feat_mask[0, -1].item() == 1)  # continuation prompts end with their audio
        prompt_patches = int(feat_mask.sum().item())
        return ModelInputs(
            text=captured["text"],
            text_mask=captured["text_mask"],
            feat=captured["feat"],
            feat_mask=feat_mask,
            min_len=captured["min_len"],
            max_len=captured["max_len"],
            inference_timesteps=captured["inference_timesteps"],
            cfg_value=captured["cfg_value"],
            context_patches=min(captured["streaming_prefix_len"] - 1, prompt_patches) if continues_audio else 0,
        )

    def text_tokens(self, text: str) -> int:
        return len(self.model.text_tokenizer(text))

    def _clean_text(self, request: SynthesisRequest) -> str:
        """What ``VoxCPM._generate`` does to the text: one line, single spaces, optionally normalized."""
        text = re.sub(r"\s+", " ", request.text.replace("\n", " "))
        if request.normalize:
            if self.tts.text_normalizer is None:
                from voxcpm.utils.text_normalize import TextNormalizer

                self.tts.text_normalizer = TextNormalizer()
            text = self.tts.text_normalizer.normalize(text)
        return text

    def speaks(self, text: str) -> bool:
        """Whether this model's tokenizer keeps anything of ``text`` (voxcpm divides by the token count)."""
        return bool(self.model.text_tokenizer(text))

    def check(self, request: SynthesisRequest) -> None:
        """Refuse what this particular model cannot do, naming the field (voxcpm's own rules: its CLI's
        ``validate_prompt_related_args``, ``validate_reference_support`` and ``build_prompt_cache``)."""
        if not self.speaks(request.text):
            raise BadRequest(f"text has nothing {self.info.name} can speak (its tokenizer keeps none of it)", "text")
        if request.denoise and not self.info.denoiser:
            raise InvalidField(
                "denoise=true needs the denoiser, which this deployment does not load "
                "(set model.load_denoiser: true in the Serve config)",
                "denoise",
            )
        prompt = request.prompt
        if prompt is not None and not prompt.text and not self.info.clones_from_audio_alone:
            raise InvalidField(
                f"prompt_text (the transcript of prompt_audio) is required by {self.info.architecture} models",
                "prompt_text",
            )
        for audio, field in ((prompt, "prompt_audio"), (request.reference, "reference_audio")):
            if audio is not None and audio.sample_rate != self.info.prompt_sample_rate:
                raise InvalidField(f"{field} must be resampled to {self.info.prompt_sample_rate} Hz", field)
        for given, field in ((request.instructions or None, "instructions"), (request.reference, "reference_audio")):
            if given is not None and not self.v2:
                raise BadRequest(
                    f"{field}: model {self.info.name!r} ({self.info.architecture}) cannot take it; VoxCPM2 models can",
                    field,
                )
        if request.reference is not None and prompt is not None and not prompt.text:
            raise InvalidField(
                "prompt_audio next to reference_audio is a continuation prompt: it needs prompt_text", "prompt_text"
            )
        if request.instructions and prompt is not None and prompt.text:
            raise BadRequest(
                "instructions cannot steer a continuation (prompt_audio with prompt_text): voxcpm puts the "
                "transcript before the text, so the description would not open it (voxcpm's CLI refuses --control "
                "with --prompt-text). Send the recording as reference_audio, or prompt_audio without prompt_text",
                "instructions",
            )

    def _encoded_prompt(self, request: SynthesisRequest) -> Any:
        """The request's recordings or saved voice, encoded: from the prompt cache when it is there.

        A saved voice is its recording as a continuation prompt, with its isolated reference recording
        beside it on VoxCPM2 (VoxCPM 1.x takes the first alone). With instructions, only an isolated
        reference (the voice's reference recording, else its recording without transcript): the description
        then styles that voice, which it could not do to a continuation (see ``check``)."""
        voice = request.voice
        if voice is not None:
            isolated = bool(request.instructions)
            key = f"voice:{voice.digest}:{request.denoise}:{isolated}:{self.v2}"
        else:
            key = PromptCache.key(request.prompt, request.reference, request.denoise)
        encoded = self.prompts.get(key)
        if encoded is None:
            if voice is None:
                encoded = self._encode(request.prompt, request.reference, request.denoise)
            else:
                recording = self._voice_recording(voice)
                reference = self._voice_recording(voice, reference=True) if self.v2 else None
                if isolated:
                    recording, reference = None, reference or dataclasses.replace(recording, text=None)
                encoded = self._encode(recording, reference, request.denoise)
            self.prompts.put(key, encoded)
        return encoded

    def _encode(self, prompt: PromptAudio | None, reference: PromptAudio | None, denoise: bool) -> Any:
        """voxcpm's ``build_prompt_cache``: a recording with its transcript is a continuation prompt, one
        without (VoxCPM2) or given as ``reference`` an isolated reference; both together: "ref_continuation"."""
        with contextlib.ExitStack() as files:
            paths: dict[str, str] = {}
            if reference is not None:
                paths["reference_wav_path"] = files.enter_context(self._prompt_file(reference, denoise))
            if prompt is not None:
                path = files.enter_context(self._prompt_file(prompt, denoise))
                if prompt.text:
                    paths.update(prompt_text=prompt.text, prompt_wav_path=path)
                else:
                    paths["reference_wav_path"] = path
            return self.model.build_prompt_cache(**paths)

    def _voice_recording(self, voice: Voice, reference: bool = False) -> PromptAudio | None:
        """A saved voice's recording with its transcript (or its isolated reference recording, none when it
        has none), read from the shared store at the model's prompt rate."""
        if self._voices is None:
            raise NotFound("this model has no voice store", "voice_id")
        if reference and voice.reference_seconds is None:
            return None
        try:
            samples, rate = self._voices.audio(voice, reference)
        except (OSError, sf.LibsndfileError):  # deleted since the ingress looked it up
            raise NotFound(f"no saved voice {voice.voice_id!r}", "voice_id") from None
        target = self.info.prompt_sample_rate
        text = None if reference else voice.text
        return PromptAudio(samples=resample(samples, rate, target), sample_rate=target, text=text)

    @contextlib.contextmanager
    def _prompt_file(self, prompt: PromptAudio, denoise: bool) -> Iterator[str]:
        with tempfile.NamedTemporaryFile(dir=self._prompt_dir, suffix=".wav") as handle:
            sf.write(handle, prompt.samples, prompt.sample_rate, format="WAV", subtype="FLOAT")
            handle.flush()
            if not denoise:
                yield handle.name
                return
            with tempfile.NamedTemporaryFile(dir=self._prompt_dir, suffix=".wav") as clean:
                self.tts.denoiser.enhance(handle.name, output_path=clean.name)
                yield clean.name
