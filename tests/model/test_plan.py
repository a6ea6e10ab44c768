"""The long-text plan over spans (``plan.py``), without a model: which prompt, pause and rate each sentence
gets, and one step budget across them all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve_app.model.plan import Part, Sentence, Spoken, utterance
from serve_app.model.types import ModelInfo, PromptAudio, Span, SynthesisRequest

INFO = ModelInfo("m", "synthetic:tiny", "voxcpm", 16000, 16000, "cpu", False)
VOICE = object()  # a saved voice's encoded prompt


def planned(parts: list[Part], max_len: int = 100, steps: int = 10) -> tuple[list[Sentence], list[PromptAudio]]:
    """Every sentence the plan yields, each answered with ``steps`` steps of audio; and what it encoded."""
    encoded: list[PromptAudio] = []

    def encode(own: PromptAudio) -> Any:
        encoded.append(own)
        return f"own voice {len(encoded)}"

    plan = utterance(SynthesisRequest(text="x", max_len=max_len), parts, INFO, encode)
    sentences = [next(plan)]
    try:
        while True:
            sentences.append(plan.send(Spoken(np.zeros(160, np.float32), steps)))
    except StopIteration:
        return sentences, encoded


def test_the_request_voice_is_one_speaker_across_spans() -> None:
    sentences, encoded = planned([Part(["a", "b"], None, None), Part(["c"], VOICE, None), Part(["d"], None, None)])
    assert [s.prompt for s in sentences] == [None, "own voice 1", VOICE, "own voice 1"]
    assert [own.text for own in encoded] == ["a"]  # the first sentence's voice, encoded once


def test_pauses_follow_a_span_last_sentence_and_a_pause_alone_joins_the_one_before() -> None:
    parts = [
        Part([], None, None, pause_after=3),  # before anything is said: nothing to follow
        Part(["a", "b"], None, None, speed=1.5, pause_after=5),
        Part([], None, None, pause_after=7),
        Part(["c"], None, None),
    ]
    sentences, _ = planned(parts)
    assert [(s.pause_after, s.speed) for s in sentences] == [(0, 1.5), (12, 1.5), (0, 1.0)]


def test_one_step_budget_for_all_spans() -> None:
    sentences, _ = planned([Part(["a", "b"], None, None), Part(["c", "d"], VOICE, None)], max_len=25, steps=10)
    assert [s.max_len for s in sentences] == [25, 15, 5]


def test_each_span_carries_its_description() -> None:
    sentences, _ = planned([Part(["a"], None, "calm"), Part(["b"], VOICE, None)])
    assert sentences[0].text.startswith("(calm)") and sentences[1].text == "b"


def test_a_request_text_is_its_spans() -> None:
    request = SynthesisRequest(spans=(Span("Hello."), Span("Bye.", pause_after=0.5)))
    assert request.text == "Hello. Bye." and request.spoken == request.spans
    assert SynthesisRequest(text="Hi.").spoken == (Span("Hi."),)
    with pytest.raises(ValueError):
        SynthesisRequest(text="other", spans=(Span("Hello."),))
