"""What a decode step's output becomes for each request (nano-vllm's post-processing): a stream's new patch
decoded through the VAE and sent, a non-streaming sentence's patches kept and decoded a few at a time, and
at a sentence's end voxcpm's retry_badcase or the plan's next sentence.

Every request's VAE state is its own (``../vae.py``: one causal-conv state per slot), so the streams of a
step are decoded together; a sentence's last piece keeps the crossfade's overlap back for the next one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from serve_app.model.batched.sequence import Sequence
from serve_app.model.engine import joined
from serve_app.model.plan import Sentence, Spoken
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.transfer import to_device
from serve_app.model.vae import StreamingVAEDecoder

# A non-streaming sentence's patches go through the VAE this many at a time (and the rest at its end),
# not one call per step: nobody hears them before the sentence is complete, and one call for 16 patches
# costs about what one call for one costs where the decoder is bound by its kernels' fixed cost (small
# models, CPU). The same causal state carries over between calls, so the audio does not change.
NON_STREAMING_DECODE_PATCHES = 16
GENERATING: Any = object()  # what ``emit`` returns while the sentence goes on


class Postprocessor:
    def __init__(self, runtime: VoxCPMRuntime, decoder: StreamingVAEDecoder) -> None:
        self.runtime = runtime
        self.decoder = decoder

    def emit(self, sequence: Sequence, chunk: np.ndarray | None, latent: torch.Tensor, stop: bool) -> Sentence | None:
        """The step's result for one request: a stream's audio chunk goes out, a non-streaming sentence keeps
        its latent patch for the VAE. Returns ``GENERATING`` while the sentence goes on, else the sentence to
        generate next (the same one again for retry_badcase), or None when the utterance is spoken."""
        ended = sequence.finished_sentence(stop)
        if chunk is not None:
            sequence.pieces.append(chunk)
            self.deliver(sequence, chunk, may_end=ended)
        else:
            sequence.latents.append(latent)
        sequence.step += 1
        if not ended:
            if len(sequence.latents) >= NON_STREAMING_DECODE_PATCHES:
                self._decode_latents(sequence)
            return GENERATING
        if not sequence.streaming and self._retry_badcase(sequence):
            return sequence.sentence
        self._decode_latents(sequence)
        audio = joined(sequence.pieces)
        if not sequence.streaming:
            self.deliver(sequence, audio)
        try:
            following = sequence.plan.send(Spoken(audio, sequence.step))  # type: ignore[union-attr]
        except StopIteration:
            following = None
        if following is not None:
            sequence.crossfade.next_segment()
            sequence.attempts = 0
        return following

    def decode_streams(self, latents: torch.Tensor, streams: list[int], rows: int) -> dict[int, np.ndarray]:
        """The streaming rows' new patches through the VAE together, by row (a row's slot is its index)."""
        if not streams:
            return {}
        if len(streams) == rows:
            audio = self.decoder.decode_batch(latents)
        else:
            audio = self.decoder.decode(latents[to_device(streams, latents.device)], streams)
        return dict(zip(streams, audio.cpu().numpy(), strict=True))

    def _decode_latents(self, sequence: Sequence) -> None:
        """A non-streaming sentence's patches so far, through the VAE in one call, continuing its slot's state."""
        if sequence.latents:
            latents = torch.cat(sequence.latents, dim=-1).unsqueeze(0)
            sequence.pieces.append(self.decoder.decode(latents, [sequence.slot])[0].cpu().numpy())
            sequence.latents = []

    def _retry_badcase(self, sequence: Sequence) -> bool:
        """voxcpm's retry_badcase: generate the sentence again while it ran to ``ratio`` x its text tokens."""
        request, inputs = sequence.request, sequence.inputs
        if not request.retry_badcase or sequence.attempts >= request.retry_badcase_max_times:
            return False
        # voxcpm 1.x counts the prompt patches its VAE decode starts from; VoxCPM2 counts the generated ones
        patches = sequence.step + (0 if self.runtime.v2 else inputs.context_patches)  # type: ignore[union-attr]
        return patches >= self.runtime.text_tokens(sequence.sentence.text) * request.retry_badcase_ratio_threshold  # type: ignore[union-attr]

    def deliver(self, sequence: Sequence, audio: np.ndarray, may_end: bool = True) -> None:
        """Audio to the consumer; only a sentence's last piece keeps the crossfade's overlap back."""
        if len(playable := sequence.crossfade.feed(audio, may_end)):
            sequence.deliver(playable)
