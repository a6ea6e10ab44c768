"""What a step's output becomes for each request (nano-vllm's post-processing): host bookkeeping only.

Per request: whether the step ended its sentence (voxcpm's stop rule and step cap) and whether voxcpm's
retry_badcase generates it again (``outcome``, decided before the VAE stage, which decodes an ending
sentence's last patches but not a retried one's); then its audio kept and, for a stream, sent; at a
sentence's end the sentence handed to the utterance's plan, which answers with the next one (or the same
again, or none: the request is done). A sentence's last piece keeps the crossfade's overlap back for the
next one.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from serve_app.model.batched.sequence import Sequence
from serve_app.model.engine import joined
from serve_app.model.plan import Sentence, Spoken
from serve_app.model.runtime import VoxCPMRuntime
from serve_app.model.span_audio import SpanAudio
from serve_app.model.types import SegmentEnd

GENERATING: Any = object()  # what ``emit`` returns while the sentence goes on


class Outcome(enum.Enum):
    GOES_ON = "goes on"  # the sentence continues
    ENDS = "ends"  # the sentence is spoken
    RETRIES = "retries"  # the sentence ran too long: generated again (retry_badcase)


class Postprocessor:
    def __init__(self, runtime: VoxCPMRuntime) -> None:
        self.runtime = runtime

    def outcome(self, sequence: Sequence, stop: bool) -> Outcome:
        """What the step just taken does to the request's sentence."""
        if not sequence.finished_sentence(stop):
            return Outcome.GOES_ON
        if not sequence.streaming:  # where voxcpm retries: checked, and told at the sentence's end
            request = sequence.request
            sequence.too_long = self._too_long(sequence, sequence.step + 1)
            if sequence.too_long and request.retry_badcase and sequence.attempts < request.retry_badcase_max_times:
                return Outcome.RETRIES
        return Outcome.ENDS

    def emit(self, sequence: Sequence, piece: np.ndarray | None, outcome: Outcome) -> Sentence | None:
        """The step's result for one request: ``piece``, what the VAE stage decoded of it this step, if anything.
        Returns ``GENERATING`` while the sentence goes on, else the sentence to generate next (the same one
        again for retry_badcase), or None when the utterance is spoken."""
        if piece is not None:
            self._decoded(sequence, piece, last=outcome is Outcome.ENDS)
        sequence.step += 1
        sequence.position += 1
        if outcome is Outcome.GOES_ON:
            return GENERATING
        if outcome is Outcome.RETRIES:
            return sequence.sentence
        audio = joined(sequence.pieces)
        if not sequence.streaming:
            self.deliver(sequence, SpanAudio(sequence.sentence, self.runtime.info.sample_rate).whole(audio))  # type: ignore[arg-type]
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
            ended = SegmentEnd(sequence.segments_ended, sequence.sentence.text, end, sequence.too_long)
            sequence.deliver(ended)
            sequence.segments_ended += 1

    def _decoded(self, sequence: Sequence, piece: np.ndarray, last: bool) -> None:
        """A decoded piece of the sentence: kept as generated, and if the request streams, sent at once as its
        span asks (``span_audio.py``; only the sentence's last piece may keep the crossfade's overlap back)."""
        sequence.pieces.append(piece)
        if not sequence.streaming:
            return
        if sequence.said is None:
            sequence.said = SpanAudio(sequence.sentence, self.runtime.info.sample_rate, self.runtime.seam_samples)  # type: ignore[arg-type]
        out = sequence.said.feed(piece)
        if last:
            out, sequence.said = np.concatenate([out, sequence.said.finish()]), None
        if len(out) or last:
            self.deliver(sequence, out, may_end=last)

    def _too_long(self, sequence: Sequence, steps: int) -> bool:
        """The sentence failed voxcpm's bad-case check, on voxcpm's count of its patches: VoxCPM 1.x counts the
        prompt patches its VAE decode starts from, VoxCPM2 the generated ones."""
        patches = steps + (0 if self.runtime.v2 else sequence.inputs.context_patches)  # type: ignore[union-attr]
        return self.runtime.too_long(sequence.request, sequence.sentence.text, patches)  # type: ignore[union-attr]

    def deliver(self, sequence: Sequence, audio: np.ndarray, may_end: bool = True) -> None:
        """Audio to the consumer; only a sentence's last piece keeps the crossfade's overlap back."""
        if len(playable := sequence.crossfade.feed(audio, may_end)):
            sequence.deliver(playable)
