"""The second stage of a step: each request's new patch through the VAE, the other model with per-slot state.

nano-vllm runs one model per step; VoxCPM's audio comes from two: the language model and diffusion
(``runner.py``), then the VAE decoder, whose causal convolutions keep a state row per slot (``../vae.py``).
Which patches go now follows ``../decode_grouping.py``: a stream's first patch alone, then a few at a time;
a non-streaming sentence's many at a time; at a sentence's end whatever is left. The rows whose call takes
one patch are decoded together, in one call (from a CUDA graph where the call is the whole batch's); a row
whose held patches are due gets a call of its own, so the decoder meets one shape per group size (built
at warm-up). In a busy step every stream decodes what it holds and its new patch now
(``decode_grouping.GROUPED_STREAMS``).
"""

from __future__ import annotations

import numpy as np
import torch

from serve_app.model.batched.sequence import Sequence
from serve_app.model.decode_grouping import GROUPED_STREAMS
from serve_app.model.transfer import to_device
from serve_app.model.vae import StreamingVAEDecoder


class VAEStage:
    def __init__(self, decoder: StreamingVAEDecoder, batch_invariant: bool) -> None:
        self.decoder = decoder
        self.batch_invariant = batch_invariant  # whose streams keep their own groups however busy the batch

    def decode_new(
        self, running: list[Sequence], latents: torch.Tensor, first: int = 0, whole: bool = True
    ) -> tuple[dict[int, np.ndarray], set[int]]:
        """Each request's new patch (row i is slot ``first + i``): decoded now with the others whose call takes
        one patch (their audio by row; ``whole``: the batch, nobody in a slot after its last row), or held
        with those it holds. Returns the audio, and the rows whose held patches are due now (``decode_held``).
        A newcomer's first patch goes in the one call with the others' (docs/engines.md: Incremental
        VAE decode)."""
        streams = sum(sequence.streaming for sequence in running)
        busy = streams > GROUPED_STREAMS and not self.batch_invariant
        singles: list[int] = []
        due: set[int] = set()
        for row, sequence in enumerate(running):
            flush = busy and sequence.streaming  # what it holds now, then a patch per step
            if not sequence.latents and (flush or sequence.grouping.group() == 1):
                singles.append(row)
                continue
            sequence.latents.append(latents[row : row + 1])
            if flush or sequence.grouping.due(len(sequence.latents)):
                due.add(row)
        return self.decode_singles(running, latents, singles, first, whole), due

    def decode_singles(
        self, running: list[Sequence], latents: torch.Tensor, rows: list[int], first: int = 0, whole: bool = True
    ) -> dict[int, np.ndarray]:
        """The new patch of each of ``rows`` through the VAE in one call: audio by row."""
        if not rows:
            return {}
        if len(rows) == len(running) and first == 0 and whole:
            decoded = self.decoder.decode_batch(latents)
        else:
            chosen = latents if len(rows) == len(running) else latents[to_device(rows, latents.device)]
            decoded = self.decoder.decode(chosen, [first + row for row in rows])
        audio = {}
        for row, samples in zip(rows, decoded.cpu().numpy(), strict=True):
            running[row].grouping.decoded(1)
            audio[row] = samples
        return audio

    def decode_held(self, sequence: Sequence) -> np.ndarray:
        """The patches the request holds (its group, or what is left at its sentence's end) through the VAE in
        one call, continuing its slot's state."""
        patches, sequence.latents = sequence.latents, []
        sequence.grouping.decoded(len(patches))
        return self.decoder.decode_patches(patches, sequence.slot)
