"""The long-text plan: an utterance as sentences generated one at a time, each span in its voice, within one
budget.

A plan is a generator: it yields each :class:`Sentence` to generate and is sent back what generating it
gave (:class:`Spoken`), so the engines (which generate) and the plan (which decides what comes next)
stay apart. The rule that keeps one voice across sentences generated separately, :func:`own_voice`, is
also what the WebSocket applies across the sentences of a context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.audio.decode import resample
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest


@dataclass(frozen=True)
class Sentence:
    """One sentence of an utterance to generate: the text, the voice's encoded prompt, its step limits."""

    text: str
    prompt: Any  # voxcpm's prompt cache dict, or None
    min_len: int
    max_len: int  # what is left of the request's step budget
    speed: float = 1.0  # its span's speaking rate
    pause_after: int = 0  # samples of silence after it (its span's pause, where it is the span's last sentence)
    turn: bool = False  # the first of a span in a saved voice of its own: a seeded request's noise starts again


@dataclass(frozen=True)
class Part:
    """One span of the request, ready to plan: its sentences (split and cleaned), its voice's encoded prompt
    (None: the request's voice without a recording, which its first sentence sets), its description, its
    rate and the samples of silence after it."""

    sentences: list[str]
    prompt: Any
    instructions: str | None
    speed: float = 1.0
    pause_after: int = 0
    turn: bool = False  # in a saved voice of its own (a dialogue's turn)


@dataclass(frozen=True)
class Spoken:
    """What generating a sentence gave: its audio (at the output rate) and how many steps it took."""

    audio: np.ndarray
    steps: int


# Yields each sentence to generate, is sent what it gave.
Utterance = Generator[Sentence, Spoken, None]


def own_voice(audio: np.ndarray, info: ModelInfo, text: str, instructions: str | None) -> PromptAudio:
    """A sentence's own audio as the prompt of the sentences after it, so that they keep its voice: a
    continuation prompt with its transcript, or with instructions (VoxCPM2) an isolated reference, because
    voxcpm reads a description only at the start of the text and a continuation puts its transcript there."""
    return PromptAudio(
        samples=resample(audio, info.sample_rate, info.prompt_sample_rate),
        sample_rate=info.prompt_sample_rate,
        text=None if instructions else text,
    )


def utterance(
    request: SynthesisRequest, parts: list[Part], info: ModelInfo, encode: Callable[[PromptAudio], Any]
) -> Utterance:
    """The ``parts``' sentences in turn, each sent back what it gave, each part in its voice.

    ``max_len`` is a budget of generation steps for the whole text. Where the request's voice has no
    recording, the first sentence in it gives its own audio, ``encode``d, as the prompt of its later ones
    (:func:`own_voice`): the request's voice is one speaker across spans too. Every sentence carries its
    part's description, as voxcpm's CLI prefixes it (``build_final_text``). A span in a saved voice of its
    own is a turn (a dialogue's): its first sentence says so (``Sentence.turn``), and the engines start a
    seeded request's noise again there, so that the turn is what that voice alone says for it with the seed.
    """
    from voxcpm.cli import build_final_text  # here: the ingress imports this module's own_voice, not voxcpm

    budget = request.max_len
    first: tuple[np.ndarray, str, str | None] | None = None  # the first prompt-less sentence spoken
    chained: Any = None  # its voice, encoded when a later prompt-less sentence needs it
    for part in _with_pauses_carried(parts):
        description = " ".join((part.instructions or "").split())  # one line, as the text is
        for index, text in enumerate(part.sentences):
            if budget <= 0:
                return
            if part.prompt is None and chained is None and first is not None:
                chained = encode(own_voice(first[0], info, first[1], first[2]))
            pause = part.pause_after if index + 1 == len(part.sentences) else 0
            spoken = yield Sentence(
                build_final_text(text, description),
                part.prompt if part.prompt is not None else chained,
                min(request.min_len, budget),
                budget,
                part.speed,
                pause,
                turn=part.turn and index == 0,
            )
            budget -= spoken.steps
            if part.prompt is None and first is None:
                first = (spoken.audio, text, part.instructions)


def _with_pauses_carried(parts: list[Part]) -> list[Part]:
    """The parts with sentences, each also pausing for the sentence-less parts after it (a pause alone): a
    pause before the first sentence has nothing to follow and is not rendered."""
    kept: list[Part] = []
    for part in parts:
        if part.sentences:
            kept.append(part)
        elif kept:
            kept[-1] = dataclasses.replace(kept[-1], pause_after=kept[-1].pause_after + part.pause_after)
    return kept
