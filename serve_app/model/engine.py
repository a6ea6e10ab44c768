"""voxcpm behind a small, synchronous interface: load, stream, synthesize.

No Ray and no asyncio here: the deployment decides on which thread this runs. Callers must
never run two generations at once on one engine (voxcpm keeps one static KV cache).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from serve_app import synthetic
from serve_app.config import ModelConfig
from serve_app.errors import InvalidField
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, this is a warm-up sentence."
# SynthesisRequest fields that go to voxcpm under the same names (retry only when not streaming).
_GENERATION_ARGUMENTS = ("text", "cfg_value", "inference_timesteps", "min_len", "max_len", "normalize", "denoise")
_RETRY_ARGUMENTS = ("retry_badcase", "retry_badcase_max_times", "retry_badcase_ratio_threshold")


class VoxCPMEngine:
    """One ``voxcpm.VoxCPM`` instance and the files it needs for prompts."""

    def __init__(self, tts: Any, config: ModelConfig) -> None:
        self._tts = tts
        model = tts.tts_model
        architecture = "voxcpm2" if type(model).__name__ == "VoxCPM2Model" else "voxcpm"
        self.info = ModelInfo(
            name=config.name,
            source=config.source,
            architecture=architecture,
            sample_rate=int(model.sample_rate),
            prompt_sample_rate=int(getattr(model, "_encode_sample_rate", model.sample_rate)),
            device=str(model.device),
            denoiser=tts.denoiser is not None,
        )
        # Prompt audio reaches voxcpm as a file path: a private directory, random names, always removed.
        self._prompt_dir = Path(tempfile.mkdtemp(prefix="voxcpm-prompts-"))

    @classmethod
    def load(cls, config: ModelConfig) -> VoxCPMEngine:
        from voxcpm import VoxCPM

        checkpoint = config.synthetic_checkpoint()
        if checkpoint is not None:
            synthetic.ensure(config.synthetic_preset or "", checkpoint)
        tts = VoxCPM.from_pretrained(
            config.source,
            load_denoiser=config.load_denoiser,
            zipenhancer_model_id=config.denoiser_model,
            cache_dir=config.cache_dir,
            optimize=config.optimize,
            device=None if config.device == "auto" else config.device,
        )
        engine = cls(tts, config)
        if config.warmup:
            engine.synthesize(SynthesisRequest(text=WARMUP_TEXT, max_len=8, retry_badcase=False))
        logger.info("loaded %s", engine.info)
        return engine

    def close(self) -> None:
        shutil.rmtree(self._prompt_dir, ignore_errors=True)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks in generation order; closing the iterator stops generation."""
        with self._voxcpm_arguments(request) as kwargs:
            chunks = self._tts.generate_streaming(**kwargs)
            try:
                yield from chunks
            finally:
                chunks.close()

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """The whole utterance at once (voxcpm's non-streaming path, with retry_badcase)."""
        with self._voxcpm_arguments(request) as kwargs:
            return self._tts.generate(**kwargs, **{name: getattr(request, name) for name in _RETRY_ARGUMENTS})

    @contextlib.contextmanager
    def _voxcpm_arguments(self, request: SynthesisRequest) -> Iterator[dict[str, Any]]:
        self._check(request)
        kwargs: dict[str, Any] = {name: getattr(request, name) for name in _GENERATION_ARGUMENTS}
        with self._prompt_file(request.prompt) as path:
            if path is not None and request.prompt is not None:
                if request.prompt.text:
                    kwargs.update(prompt_wav_path=path, prompt_text=request.prompt.text)
                else:
                    kwargs.update(reference_wav_path=path)
            yield kwargs

    def _check(self, request: SynthesisRequest) -> None:
        """Refuse what this particular model cannot do, naming the field."""
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

    @contextlib.contextmanager
    def _prompt_file(self, prompt: PromptAudio | None) -> Iterator[str | None]:
        if prompt is None:
            yield None
            return
        with tempfile.NamedTemporaryFile(dir=self._prompt_dir, suffix=".wav") as handle:
            sf.write(handle, prompt.samples, prompt.sample_rate, format="WAV", subtype="FLOAT")
            handle.flush()
            yield handle.name
