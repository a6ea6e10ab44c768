"""A request's text as spans (``types.Span``), rendered by both engines: spans in the request's voice are one
speaker with the plain text's exact audio, a pause is that much silence between the sentences, a span's rate
stretches its audio alone, and a span in a saved voice speaks with that voice's prompt."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.errors import BadRequest
from serve_app.model.engine import joined
from serve_app.model.plan import Spoken
from serve_app.model.types import SegmentEnd, Span, SynthesisRequest
from tests.conftest import ADMIN
from tests.model.batched.engines import DECODE_ROUNDING, alone

FIRST, SECOND = "你好世界。", "再来一句。"
SETTINGS = dict(seed=7, max_len=60, retry_badcase=False)


def first_sentence_length(reference, request: SynthesisRequest) -> int:  # type: ignore[no-untyped-def]
    """How many samples of ``request``'s audio are its first sentence's (up to the end of its seam with the
    next): its end as the stream reports it is the middle of that seam."""
    marked = SynthesisRequest(**{**request.__dict__, "segments": True})
    end = next(item for item in reference.generate(marked, streaming=True) if isinstance(item, SegmentEnd)).end
    seam = reference.runtime.seam_samples
    return end + seam - seam // 2


def both(engines: tuple, request: SynthesisRequest) -> np.ndarray:
    """The request's stream from the reference engine, and the batched engine's the same bit for bit."""
    reference, batched, _ = engines
    audio = alone(reference, request)
    assert np.array_equal(batched.generate(request, streaming=True), audio)
    return audio


def test_spans_in_the_request_voice_are_the_plain_text(engines: tuple) -> None:
    plain = SynthesisRequest(text=FIRST + " " + SECOND, **SETTINGS)
    spans = SynthesisRequest(spans=(Span(FIRST), Span(SECOND)), **SETTINGS)
    assert spans.text == plain.text
    assert np.array_equal(both(engines, spans), both(engines, plain))


def test_a_pause_is_silence_between_the_sentences(engines: tuple) -> None:
    reference = engines[0]
    pause = 0.25
    plain = SynthesisRequest(spans=(Span(FIRST), Span(SECOND)), **SETTINGS)
    paused = SynthesisRequest(spans=(Span(FIRST, pause_after=pause), Span(SECOND)), **SETTINGS)
    samples, seam = round(pause * reference.info.sample_rate), reference.runtime.seam_samples
    without, audio = both(engines, plain), both(engines, paused)
    first = first_sentence_length(reference, plain)
    assert first_sentence_length(reference, paused) == first + samples  # the pause is the sentence's
    assert len(audio) == len(without) + samples
    assert np.array_equal(audio[: first - seam], without[: first - seam])
    assert audio[first - seam : first].any()  # the first sentence fades out into the pause ...
    assert not audio[first : first + samples - seam].any()  # ... silence ...
    assert np.array_equal(audio[first + samples :], without[first:])  # ... and the second sentence as it was


def test_a_pause_in_the_non_streaming_api(engines: tuple) -> None:
    """/api/tts renders a span's pause too: each sentence generated whole, then paused after."""
    reference, batched, _ = engines
    plain = SynthesisRequest(spans=(Span(FIRST), Span(SECOND)), **SETTINGS)
    paused = SynthesisRequest(spans=(Span(FIRST, pause_after=0.1), Span(SECOND)), **SETTINGS)
    want = joined(reference.generate(paused, streaming=False))
    assert len(want) == len(joined(reference.generate(plain, streaming=False))) + round(
        0.1 * reference.info.sample_rate
    )
    got = batched.generate(paused, streaming=False)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < DECODE_ROUNDING


def test_a_span_rate_stretches_its_own_audio_alone(engines: tuple) -> None:
    reference = engines[0]
    plain = SynthesisRequest(spans=(Span(FIRST), Span(SECOND)), **SETTINGS)
    faster = SynthesisRequest(spans=(Span(FIRST, speed=2.0), Span(SECOND)), **SETTINGS)
    without, audio = both(engines, plain), both(engines, faster)
    first = first_sentence_length(reference, plain)
    stretched = round(first / 2)  # the stretcher keeps the length exact
    assert first_sentence_length(reference, faster) == stretched
    assert len(audio) == len(without) - first + stretched
    assert np.array_equal(audio[stretched:], without[first:])  # the second sentence, after the seam, as it was


def test_a_span_in_a_saved_voice_speaks_with_it(engines: tuple) -> None:
    reference, _, voices = engines
    rate = reference.info.prompt_sample_rate
    recording = (np.sin(np.arange(rate) / 7) * 0.3).astype(np.float32)
    voice = voices.create(ADMIN, "span voice", "参考音频", recording, rate)
    in_voice = SynthesisRequest(text=FIRST + " " + SECOND, voice=voice, **SETTINGS)
    spans_in_voice = SynthesisRequest(spans=(Span(FIRST, voice=voice), Span(SECOND, voice=voice)), **SETTINGS)
    assert np.array_equal(both(engines, spans_in_voice), both(engines, in_voice))
    # one span in the voice, after one in the request's: the plan hands the second sentence the voice's prompt
    plan = reference.runtime.utterance(SynthesisRequest(spans=(Span(FIRST), Span(SECOND, voice=voice)), **SETTINGS))
    first = next(plan)
    assert first.prompt is None
    second = plan.send(Spoken(joined(reference.generate(SynthesisRequest(text=FIRST, **SETTINGS), True)), 10))
    assert second.prompt is reference.runtime.prompts.encoded(in_voice)
    plan.close()


def test_a_dialogue_turn_is_what_its_voice_alone_says_with_the_seed(engines: tuple) -> None:
    """Two saved voices taking turns in one request: each turn's audio is that voice's alone for its text with
    the same seed (the engines start the seeded noise again at a turn), but for the seam between them and the
    VAE's float rounding (a stream's later sentences are decoded in larger groups of patches than a first)."""
    reference, _, voices = engines
    rate, seam = reference.info.prompt_sample_rate, reference.runtime.seam_samples
    settings = {**SETTINGS, "max_len": 400}  # a budget neither turn reaches: each has all it would alone
    recordings = [(np.sin(np.arange(rate) / (5 + n)) * 0.3).astype(np.float32) for n in range(2)]
    speakers = [voices.create(ADMIN, f"speaker {n}", "参考音频", recordings[n], rate) for n in range(2)]
    dialogue = SynthesisRequest(spans=(Span(FIRST, voice=speakers[0]), Span(SECOND, voice=speakers[1])), **settings)
    alone_first = both(engines, SynthesisRequest(text=FIRST, voice=speakers[0], **settings))
    alone_second = both(engines, SynthesisRequest(text=SECOND, voice=speakers[1], **settings))
    audio = both(engines, dialogue)
    first = first_sentence_length(reference, dialogue)
    assert first == len(alone_first) and len(audio) == len(alone_first) + len(alone_second) - seam
    assert np.array_equal(audio[: first - seam], alone_first[:-seam])
    assert np.abs(audio[first:] - alone_second[seam:]).max() < DECODE_ROUNDING
    # the same two sentences in one voice, no turn: the noise goes on, and the second sentence is another
    one_voice = SynthesisRequest(spans=(Span(FIRST, voice=speakers[1]), Span(SECOND, voice=speakers[1])), **settings)
    assert np.abs(both(engines, one_voice)[-len(alone_second) + seam :] - alone_second[seam:]).max() > 0.01


def test_a_span_rate_or_pause_out_of_range_is_refused_before_any_audio(engines: tuple) -> None:
    reference = engines[0]
    for span in (Span(FIRST, speed=5.0), Span(FIRST, pause_after=-1.0), Span(FIRST, pause_after=60.0)):
        with pytest.raises(BadRequest) as refused:
            next(reference.runtime.utterance(SynthesisRequest(spans=(span,), **SETTINGS)))
        assert refused.value.field == "text"
