"""One request's progress through the batched engine: what it asked, where it is, what it still owes.

The frozen ``SynthesisRequest`` says what was asked; a ``Sequence`` is the mutable rest (as nano-vllm's
``Sequence`` is): its status and slot (its keys, values and hidden state are the runner's, in that slot),
the sentence being generated and its position and step in it, its noise generator, and the audio on its way
out.
Only the engine's loop thread touches it, except ``cancelled``, which the event loop sets.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from serve_app.audio.seams import Crossfader
from serve_app.model.adapters import LoadedAdapter
from serve_app.model.batched.runner import Row
from serve_app.model.decode_grouping import DecodeGrouping
from serve_app.model.engine import Started
from serve_app.model.inputs import ModelInputs
from serve_app.model.plan import Sentence, Utterance
from serve_app.model.span_audio import SpanAudio
from serve_app.model.types import SynthesisRequest


class Status(enum.Enum):
    WAITING = "waiting"  # queued for a KV slot
    RUNNING = "running"  # in a slot, stepped with the batch
    FINISHED = "finished"  # done, failed or cancelled: its slot is free


@dataclass(eq=False)
class Sequence:
    request: SynthesisRequest
    started: Started
    deliver: Callable[[object], None]  # hands a chunk, an exception or END to the consumer (thread-safe)
    crossfade: Crossfader
    generator: torch.Generator  # this request's diffusion noise, as voxcpm's global generator would give it
    grouping: DecodeGrouping  # streamed or not, and how many patches its next VAE call takes
    adapter: LoadedAdapter | None = None  # its LoRA adapter's weights; None: the base model
    status: Status = Status.WAITING
    cancelled: bool = False
    slot: int = -1
    plan: Utterance | None = None
    sentence: Sentence | None = None
    inputs: ModelInputs | None = None
    ending: bool = False  # its sentence ended; its held patches wait for a step with time for them (background)
    attempts: int = 0  # generations of the current sentence (retry_badcase)
    too_long: bool = False  # its last generation failed the bad-case check (told in its SegmentEnd)
    segments_ended: int = 0  # sentences whose end it was told (SegmentEnd), when it asked
    step: int = 0  # of the current sentence
    position: int = 0  # the next KV position
    pieces: list[np.ndarray] = field(default_factory=list)  # the current sentence's audio
    latents: list[torch.Tensor] = field(default_factory=list)  # patches not yet through the VAE
    said: SpanAudio | None = None  # a stream's current sentence on its way out, at its span's rate

    @property
    def background(self) -> bool:
        """Whether it waits for every live request (a job's), which it never makes wait."""
        return self.request.priority == "background"

    @property
    def streaming(self) -> bool:
        """Audio as it is decoded, or each sentence once complete."""
        return self.grouping.streaming

    def row(self) -> Row:
        """Its part of the next decode step (besides its slot's hidden state)."""
        assert self.inputs is not None
        inputs = self.inputs
        return Row(
            self.position,
            inputs.inference_timesteps,
            inputs.cfg_value,
            self.generator,
            self.adapter,
        )

    def finished_sentence(self, stop: bool) -> bool:
        """Whether the step just taken ends the sentence: voxcpm's stop rule and its step cap."""
        assert self.inputs is not None
        return (self.step > self.inputs.min_len and stop) or self.step + 1 >= self.inputs.max_len
