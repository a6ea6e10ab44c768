"""What a decode step's output becomes for each request (nano-vllm's post-processing): its new patch
through the VAE when its next call is due (``../decode_grouping.py``: a stream's first patch alone, then
a few at a time; a non-streaming sentence's many at a time), a stream's audio sent, and at a sentence's
end what is left decoded, voxcpm's retry_badcase, or the plan's next sentence.

Every request's VAE state is its own (``../vae.py``: one causal-conv state per slot), so the requests
of a step whose calls take one patch are decoded together; a sentence's last piece keeps the
crossfade's overlap back for the next one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from serve_app.model.batched.sequence import Sequence
from serve_app.model.decode_grouping import GROUPED_STREAMS
from serve_app.model.engine import joined
from serve_app.model.plan import Sentence, Spoken
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.transfer import to_device
from serve_app.model.types import SegmentEnd
from serve_app.model.vae import StreamingVAEDecoder

GENERATING: Any = object()  # what ``emit`` returns while the sentence goes on


class Postprocessor:
    def __init__(self, runtime: VoxCPMRuntime, decoder: StreamingVAEDecoder) -> None:
        self.runtime = runtime
        self.decoder = decoder

    def decode(
        self, running: list[Sequence], latents: torch.Tensor, first: int = 0, whole: bool = True
    ) -> tuple[dict[int, np.ndarray], dict[int, int | None]]:
        """Each request's new patch (row i is slot ``first + i``) joins those it holds. The calls of one patch
        run now, together (from a CUDA graph where they are ``whole``: the batch, nobody in a slot after its
        last row): their audio by row. Returns it
        with the rows whose longer call is due, and its size (None: the row's next group), for
        ``decode_group`` once the others' audio is out: a call of its own per row, so that the decoder meets
        one shape per group size (built at warm-up). In a busy step every stream decodes what it holds and
        its new patch now (``decode_grouping.GROUPED_STREAMS``).

        (Sending newcomers' first patches before the others' call took a VAE call's time off first audio
        but put it between a newcomer's first and second chunks, when its listener holds one patch: over
        HTTP at 16 clients 40 of 96 streams ran dry, against none.)"""
        streams = sum(sequence.streaming for sequence in running)
        busy = streams > GROUPED_STREAMS and not self.runtime.batch_invariant
        singles: list[int] = []
        grouped: dict[int, int | None] = {}
        for row, sequence in enumerate(running):
            flush = busy and sequence.streaming  # what it holds now, then a patch per step
            if not sequence.latents and (flush or sequence.grouping.group() == 1):
                singles.append(row)
                continue
            sequence.latents.append(latents[row : row + 1])
            if flush:
                grouped[row] = len(sequence.latents)
            elif sequence.grouping.due(len(sequence.latents)):
                grouped[row] = None
        return self.decode_singles(running, latents, singles, first, whole), grouped

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

    def emit(self, sequence: Sequence, piece: np.ndarray | None, stop: bool) -> Sentence | None:
        """The step's result for one request: ``piece``, what ``decode`` decoded of it this step, if anything.
        Returns ``GENERATING`` while the sentence goes on, else the sentence to generate next (the same one
        again for retry_badcase), or None when the utterance is spoken."""
        ended = sequence.finished_sentence(stop)
        if piece is not None:
            self._decoded(sequence, piece, last=ended and not sequence.latents)
        sequence.step += 1
        if not ended:
            return GENERATING
        if not sequence.streaming and self._retry_badcase(sequence):
            return sequence.sentence
        if sequence.latents:  # fewer than a group
            self._decoded(sequence, self.decode_group(sequence), last=True)
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
            self.segment_ended(sequence, sequence.crossfade.boundary())
        return following

    @staticmethod
    def segment_ended(sequence: Sequence, end: int) -> None:
        """Where the sentence just spoken ends in the request's stream, if it asked (``segments``)."""
        if sequence.request.segments and sequence.sentence is not None:
            sequence.deliver(SegmentEnd(sequence.segments_ended, sequence.sentence.text, end))
            sequence.segments_ended += 1

    def decode_group(self, sequence: Sequence, size: int | None = None) -> np.ndarray:
        """The request's next ``size`` held patches (default: its next group, or all it holds if fewer) through
        the VAE in one call, continuing its slot's state."""
        size = size or sequence.grouping.group()
        patches, sequence.latents = sequence.latents[:size], sequence.latents[size:]
        sequence.grouping.decoded(len(patches))
        return self.decoder.decode_patches(patches, sequence.slot)

    def _decoded(self, sequence: Sequence, piece: np.ndarray, last: bool) -> None:
        """A decoded piece of the sentence: kept, and sent at once if the request streams (only the
        sentence's last piece may keep the crossfade's overlap back)."""
        sequence.pieces.append(piece)
        if sequence.streaming:
            self.deliver(sequence, piece, may_end=last)

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
