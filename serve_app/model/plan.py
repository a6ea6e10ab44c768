"""The long-text plan: an utterance as sentences generated one at a time, in one voice, within one budget.

A plan is a generator: it yields each :class:`Sentence` to generate and is sent back what generating it
gave (:class:`Spoken`), so the engines (which generate) and the plan (which decides what comes next)
stay apart. The rule that keeps one voice across sentences generated separately, :func:`own_voice`, is
also what the WebSocket applies across the sentences of a context.
"""

from __future__ import annotations

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
    request: SynthesisRequest,
    sentences: list[str],
    prompt: Any,
    info: ModelInfo,
    encode: Callable[[PromptAudio], Any],
) -> Utterance:
    """The request's ``sentences`` in turn, each sent back what it gave, in one voice.

    ``max_len`` is a budget of generation steps for the whole text. Without a recorded ``prompt`` the first
    sentence's own audio, ``encode``d, becomes the prompt of the rest (:func:`own_voice`). Every sentence
    carries the request's description, as voxcpm's CLI prefixes it (``build_final_text``).
    """
    from voxcpm.cli import build_final_text  # here: the ingress imports this module's own_voice, not voxcpm

    description = " ".join((request.instructions or "").split())  # one line, as the text is
    budget = request.max_len
    for index, text in enumerate(sentences):
        if budget <= 0:
            return
        spoken = yield Sentence(build_final_text(text, description), prompt, min(request.min_len, budget), budget)
        budget -= spoken.steps
        if prompt is None and index + 1 < len(sentences):
            prompt = encode(own_voice(spoken.audio, info, text, request.instructions))
