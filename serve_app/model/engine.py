"""voxcpm behind a small, synchronous interface: load, stream, synthesize.

No Ray and no asyncio here: the deployment decides on which thread this runs. Callers must
never run two generations at once on one engine (voxcpm keeps one static KV cache).

Generation follows ``VoxCPM._generate`` (text clean-up, optional normalization, denoised prompt),
one sentence at a time for long text (crossfaded into one signal, in one voice), and keeps the
encoded prompt: voxcpm's ``build_prompt_cache`` result is reused through
``_generate_with_prompt_cache`` whenever the same reference comes again, so a client that sends
the same reference with every request (as the seed's cloning example does) pays for encoding once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from serve_app.audio.reference import resample
from serve_app.audio.seams import Crossfader
from serve_app.config import ModelConfig
from serve_app.errors import BadRequest, InvalidField, NotFound
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest
from serve_app.text import split_sentences
from serve_app.voices import Voice, VoiceStore
from serve_app.weights import Weights
from serve_app.weights import resolve as resolve_weights

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, this is a warm-up sentence."
_RETRY_ARGUMENTS = ("retry_badcase", "retry_badcase_max_times", "retry_badcase_ratio_threshold")
SEAM_SECONDS = 0.01  # crossfade between sentences generated separately


def joined(pieces: Iterable[np.ndarray]) -> np.ndarray:
    """Consecutive pieces of one signal as one array (empty float32 when there are none)."""
    return np.concatenate([np.zeros(0, np.float32), *pieces])


class PromptCache:
    """Encoded prompts by content (audio, rate, transcript, denoise), least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(prompt: PromptAudio, denoise: bool) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(prompt.samples, dtype=np.float32).tobytes())
        digest.update(f"{prompt.sample_rate}|{denoise}|{prompt.text or ''}".encode())
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


class VoxCPMEngine:
    """One ``voxcpm.VoxCPM`` instance, its encoded prompts and the files it needs for them."""

    def __init__(
        self, tts: Any, config: ModelConfig, voices: VoiceStore | None = None, weights: Weights | None = None
    ) -> None:
        self._tts = tts
        self._voices = voices
        self._model = tts.tts_model
        architecture = "voxcpm2" if type(self._model).__name__ == "VoxCPM2Model" else "voxcpm"
        self.info = ModelInfo(
            name=config.name,
            source=weights.source if weights else config.source,
            architecture=architecture,
            sample_rate=int(self._model.sample_rate),
            prompt_sample_rate=int(getattr(self._model, "_encode_sample_rate", self._model.sample_rate)),
            device=str(self._model.device),
            denoiser=tts.denoiser is not None,
            synthetic=weights.synthetic if weights else False,
        )
        self.prompts = PromptCache(config.prompt_cache_size)
        # Samples per generation step at the output rate, and the crossfade between sentences.
        decode_hop = getattr(self._model, "_decode_chunk_size", self._model.chunk_size)
        self._step_samples = int(self._model.patch_size * decode_hop)
        self._seam_samples = int(SEAM_SECONDS * self.info.sample_rate)
        # Prompt audio reaches voxcpm as a file path: a private directory, random names, always removed.
        self._prompt_dir = Path(tempfile.mkdtemp(prefix=f"voxcpm-prompts-{os.getpid()}-"))  # pid: whose it is

    @classmethod
    def load(cls, config: ModelConfig, voices: VoiceStore | None = None) -> VoxCPMEngine:
        from voxcpm import VoxCPM

        weights = resolve_weights(config)
        tts = VoxCPM.from_pretrained(
            weights.path,
            load_denoiser=config.load_denoiser,
            zipenhancer_model_id=config.denoiser_model,
            cache_dir=config.cache_dir,
            optimize=config.optimize,
            device=None if config.device == "auto" else config.device,
        )
        engine = cls(tts, config, voices, weights)
        if config.warmup:
            engine.warm_up()
        logger.info("loaded %s", engine.info)
        return engine

    def warm_up(self) -> None:
        """One short generation from a prompt, so that no user pays for lazy initialisation
        (torch kernels, and for VoxCPM 1.x the FFmpeg libraries that read prompt files: ~1 s)."""
        rate = self.info.prompt_sample_rate
        silence = PromptAudio(samples=np.zeros(rate // 2, dtype=np.float32), sample_rate=rate, text="warm up")
        self.synthesize(SynthesisRequest(text=WARMUP_TEXT, prompt=silence, max_len=8, retry_badcase=False))
        self.prompts.clear()

    def close(self) -> None:
        shutil.rmtree(self._prompt_dir, ignore_errors=True)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks in generation order; closing the iterator stops generation."""
        yield from self._joined(request, streaming=True)

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """The whole utterance at once (voxcpm's non-streaming path, with retry_badcase)."""
        return joined(self.sentences(request))

    def sentences(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """The utterance a sentence at a time through voxcpm's non-streaming path: closing the
        iterator stops before the next sentence."""
        yield from self._joined(request, streaming=False)

    def _joined(self, request: SynthesisRequest, streaming: bool) -> Iterator[np.ndarray]:
        """The sentences' audio as one signal, crossfaded at each seam."""
        crossfade = Crossfader(self._seam_samples)
        spoken = self._spoken(request, streaming)
        try:
            for samples in spoken:
                if samples is None:
                    crossfade.next_segment()
                elif len(playable := crossfade.feed(samples)):
                    yield playable
            if len(tail := crossfade.flush()):
                yield tail
        finally:
            spoken.close()

    def _spoken(self, request: SynthesisRequest, streaming: bool) -> Iterator[np.ndarray | None]:
        """Each sentence's audio in turn (None between sentences), in one voice.

        ``max_len`` is a budget of generation steps for the whole text. Without a reference, the
        first sentence's own audio becomes the prompt of the rest, so the voice stays the same.
        """
        self._check(request)
        prompt = self._encoded_prompt(request) if request.prompt or request.voice else None
        sentences = [sentence for sentence in split_sentences(self._clean_text(request)) if self.speaks(sentence)]
        # voxcpm cannot retry a bad case it has already streamed
        retry = {"retry_badcase": False} if streaming else {name: getattr(request, name) for name in _RETRY_ARGUMENTS}
        budget = request.max_len
        for index, sentence in enumerate(sentences):
            if budget <= 0:
                return
            if index:
                yield None
            audio: list[np.ndarray] = []
            generation = self._model._generate_with_prompt_cache(
                target_text=sentence,
                prompt_cache=prompt,
                min_len=min(request.min_len, budget),
                max_len=budget,
                inference_timesteps=request.inference_timesteps,
                cfg_value=request.cfg_value,
                streaming=streaming,
                **retry,
            )
            try:
                for samples, _, _ in generation:
                    audio.append(samples.squeeze(0).cpu().numpy())
                    yield audio[-1]
            finally:
                generation.close()
            budget -= len(audio) if streaming else round(sum(map(len, audio)) / self._step_samples)
            if prompt is None and index + 1 < len(sentences):
                spoken = PromptAudio(
                    samples=resample(np.concatenate(audio), self.info.sample_rate, self.info.prompt_sample_rate),
                    sample_rate=self.info.prompt_sample_rate,
                    text=sentence,
                )
                prompt = self._encode(spoken, denoise=False)

    def _clean_text(self, request: SynthesisRequest) -> str:
        """What ``VoxCPM._generate`` does to the text: one line, single spaces, optionally normalized."""
        text = re.sub(r"\s+", " ", request.text.replace("\n", " "))
        if request.normalize:
            if self._tts.text_normalizer is None:
                from voxcpm.utils.text_normalize import TextNormalizer

                self._tts.text_normalizer = TextNormalizer()
            text = self._tts.text_normalizer.normalize(text)
        return text

    def speaks(self, text: str) -> bool:
        """Whether this model's tokenizer keeps anything of ``text`` (voxcpm divides by the token count)."""
        return bool(self._model.text_tokenizer(text))

    def _check(self, request: SynthesisRequest) -> None:
        """Refuse what this particular model cannot do, naming the field."""
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
        if prompt is not None and prompt.sample_rate != self.info.prompt_sample_rate:
            raise InvalidField(f"prompt audio must be resampled to {self.info.prompt_sample_rate} Hz", "prompt_audio")

    def _encoded_prompt(self, request: SynthesisRequest) -> Any:
        """The request's reference or saved voice, encoded: from the prompt cache when it is there."""
        if request.voice is not None:
            key = f"voice:{request.voice.digest}:{request.denoise}"
        else:
            assert request.prompt is not None
            key = PromptCache.key(request.prompt, request.denoise)
        encoded = self.prompts.get(key)
        if encoded is None:
            prompt = request.prompt if request.voice is None else self._voice_prompt(request.voice)
            encoded = self._encode(prompt, request.denoise)
            self.prompts.put(key, encoded)
        return encoded

    def _encode(self, prompt: PromptAudio, denoise: bool) -> Any:
        with self._prompt_file(prompt, denoise) as path:
            if prompt.text:
                return self._model.build_prompt_cache(prompt_text=prompt.text, prompt_wav_path=path)
            return self._model.build_prompt_cache(reference_wav_path=path)  # VoxCPM2: no transcript needed

    def _voice_prompt(self, voice: Voice) -> PromptAudio:
        """A saved voice's recording, read from the shared store at the model's prompt rate."""
        if self._voices is None:
            raise NotFound("this model has no voice store", "voice_id")
        try:
            samples, rate = self._voices.audio(voice)
        except (OSError, sf.LibsndfileError):  # deleted since the ingress looked it up
            raise NotFound(f"no saved voice {voice.voice_id!r}", "voice_id") from None
        target = self.info.prompt_sample_rate
        return PromptAudio(samples=resample(samples, rate, target), sample_rate=target, text=voice.text)

    @contextlib.contextmanager
    def _prompt_file(self, prompt: PromptAudio, denoise: bool) -> Iterator[str]:
        with tempfile.NamedTemporaryFile(dir=self._prompt_dir, suffix=".wav") as handle:
            sf.write(handle, prompt.samples, prompt.sample_rate, format="WAV", subtype="FLOAT")
            handle.flush()
            if not denoise:
                yield handle.name
                return
            with tempfile.NamedTemporaryFile(dir=self._prompt_dir, suffix=".wav") as clean:
                self._tts.denoiser.enhance(handle.name, output_path=clean.name)
                yield clean.name
