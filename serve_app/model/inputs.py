"""voxcpm's own generation of one sentence, and the model inputs it builds for it, taken as voxcpm makes
them so that neither engine re-implements them (tokens, masks, the prompt features of every prompt mode of
either architecture, the length cap)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.model.plan import Sentence
from serve_app.model.types import SynthesisRequest

RETRY_ARGUMENTS = ("retry_badcase", "retry_badcase_max_times", "retry_badcase_ratio_threshold")


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


def generation(
    model: Any, sentence: Sentence, request: SynthesisRequest, streaming: bool, retry: bool = False
) -> Iterator[tuple[Any, Any, Any]]:
    """voxcpm's own generation of one sentence (``_generate_with_prompt_cache``); ``retry``: with the request's
    retry_badcase settings (voxcpm cannot retry what it has streamed)."""
    retries = {name: getattr(request, name) for name in RETRY_ARGUMENTS} if retry else {"retry_badcase": False}
    return model._generate_with_prompt_cache(
        target_text=sentence.text,
        prompt_cache=sentence.prompt,
        min_len=sentence.min_len,
        max_len=sentence.max_len,
        inference_timesteps=request.inference_timesteps,
        cfg_value=request.cfg_value,
        streaming=streaming,
        **retries,
    )


def model_inputs(model: Any, sentence: Sentence, request: SynthesisRequest) -> ModelInputs:
    """The inputs voxcpm's ``_generate_with_prompt_cache`` gives its ``_inference`` for this sentence.

    voxcpm builds them inside that method, interleaved with its generation loop; standing in for
    ``_inference`` for one call takes them as voxcpm made them.
    """
    captured: dict[str, Any] = {}

    def capture(text: Any, text_mask: Any, feat: Any, feat_mask: Any, **options: Any) -> Iterator[Any]:
        captured.update(text=text, text_mask=text_mask, feat=feat, feat_mask=feat_mask, **options)
        return iter(())

    model._inference = capture
    try:
        for _ in generation(model, sentence, request, streaming=True):
            pass
    finally:
        del model._inference
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
