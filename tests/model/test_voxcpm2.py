"""VoxCPM2's description and prompt modes, in-process: what text and which prompt mode voxcpm receives.

Random weights cannot show a style, so these check the inputs: each sentence's text as voxcpm's CLI builds
it (``build_final_text``: the description in parentheses first) and the prompt cache's mode
("reference", "continuation", "ref_continuation"), through the reference engine on synthetic checkpoints.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile as sf

from serve_app.errors import ServiceError
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.engine import joined
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import PromptAudio, SynthesisRequest
from serve_app.store.voice_store import VoiceStore
from tests.conftest import ADMIN, FLOAT32_TOLERANCE, TINY_V2_STEP_FRAMES, V2_MODEL, Service, error_of, run

TWO_SENTENCES = "这是第一个句子。这是第二个句子。"


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> VoiceStore:
    return VoiceStore(tmp_path_factory.mktemp("voices"))


@pytest.fixture(scope="module")
def v2(synthetic_engine: Callable[..., Any], voices: VoiceStore) -> Any:
    return synthetic_engine("tiny-voxcpm2", voices=voices)


@pytest.fixture(scope="module")
def v15(synthetic_engine: Callable[..., Any], voices: VoiceStore) -> Any:
    return synthetic_engine("tiny-voxcpm1.5", voices=voices)


class Spy:
    """Records what voxcpm's ``_generate_with_prompt_cache`` is given: (target text, prompt mode)."""

    def __init__(self, engine: ReferenceEngine | BatchedEngine) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self._model = engine.runtime.model
        self._original = self._model._generate_with_prompt_cache

        def spy(*args: Any, **kwargs: Any) -> Any:
            cache = kwargs["prompt_cache"]
            self.calls.append((kwargs["target_text"], None if cache is None else cache.get("mode", "continuation")))
            return self._original(*args, **kwargs)

        self._model._generate_with_prompt_cache = spy

    def close(self) -> None:
        del self._model._generate_with_prompt_cache


def _spoken(engine: ReferenceEngine, request: SynthesisRequest, streaming: bool = True) -> list[tuple[str, str | None]]:
    return _spoken_audio(engine, request, streaming)[0]


def _spoken_audio(
    engine: ReferenceEngine | BatchedEngine, request: SynthesisRequest, streaming: bool = True
) -> tuple[list[tuple[str, str | None]], np.ndarray]:
    spy = Spy(engine)
    try:
        generated = engine.generate(request, streaming=streaming)
        audio = generated if isinstance(generated, np.ndarray) else joined(generated)
    finally:
        spy.close()
    assert audio.size > 0
    return spy.calls, audio


def _recording(engine: ReferenceEngine, text: str | None, seconds: float = 1.0, tone: float = 9.0) -> PromptAudio:
    rate = engine.info.prompt_sample_rate
    samples = (0.3 * np.sin(np.arange(int(rate * seconds)) / tone)).astype(np.float32)
    return PromptAudio(samples=samples, sample_rate=rate, text=text)


@pytest.mark.parametrize("streaming", [True, False])
def test_every_sentence_keeps_the_description_and_the_first_sentence_is_an_isolated_reference(
    v2: ReferenceEngine, streaming: bool
) -> None:
    request = SynthesisRequest(text=TWO_SENTENCES, instructions="温暖的女声", max_len=200, retry_badcase=False)
    assert _spoken(v2, request, streaming) == [
        ("(温暖的女声)这是第一个句子。", None),
        ("(温暖的女声)这是第二个句子。", "reference"),
    ]


def test_the_batched_engine_gets_the_same_inputs_and_audio(
    v2: ReferenceEngine, synthetic_engine: Callable[..., Any]
) -> None:
    """Descriptions and prompt modes live in the runtime both engines share: the batched engine speaks the
    same sentences with the same prompts, to the audio of the reference engine (float32: within tolerance)."""
    batched = synthetic_engine("tiny-voxcpm2", "batched")
    try:
        request = SynthesisRequest(text=TWO_SENTENCES, instructions="温暖的女声", max_len=200, seed=7)
        want_calls, want = _spoken_audio(v2, request)
        got_calls, got = _spoken_audio(batched, request)
    finally:
        batched.close()
    assert got_calls == want_calls
    assert want_calls == [("(温暖的女声)这是第一个句子。", None), ("(温暖的女声)这是第二个句子。", "reference")]
    assert got.shape == want.shape and np.abs(got - want).max() <= FLOAT32_TOLERANCE


def test_without_a_description_the_first_sentence_is_a_continuation_prompt(v2: ReferenceEngine) -> None:
    assert _spoken(v2, SynthesisRequest(text=TWO_SENTENCES, max_len=200)) == [
        ("这是第一个句子。", None),
        ("这是第二个句子。", "continuation"),
    ]


def test_description_styles_an_isolated_reference(v2: ReferenceEngine) -> None:
    request = SynthesisRequest(text="克隆。", reference=_recording(v2, None), instructions="slowly", max_len=5)
    assert _spoken(v2, request) == [("(slowly)克隆。", "reference")]


def test_reference_with_a_continuation_prompt_is_ref_continuation_keyed_on_both(v2: ReferenceEngine) -> None:
    reference = _recording(v2, None, tone=7.0)
    misses = v2.prompt_lookups()[1]
    for transcript in ("第一段", "第一段", "第二段"):
        request = SynthesisRequest(text="继续。", reference=reference, prompt=_recording(v2, transcript), max_len=5)
        assert _spoken(v2, request) == [("继续。", "ref_continuation")]
    assert v2.prompt_lookups()[1] == misses + 2  # the same pair once; another prompt with it: encoded again


def test_a_saved_voice_with_a_description_becomes_an_isolated_reference(
    v2: ReferenceEngine, voices: VoiceStore
) -> None:
    recording = _recording(v2, "参考文本")
    voice = voices.create(ADMIN, "narrator", "参考文本", recording.samples, recording.sample_rate)
    assert _spoken(v2, SynthesisRequest(text="你好。", voice=voice, max_len=5)) == [("你好。", "continuation")]
    styled = SynthesisRequest(text="你好。", voice=voice, instructions="cheerful", max_len=5)
    assert _spoken(v2, styled) == [("(cheerful)你好。", "reference")]


def test_a_designed_voice_keeps_its_description_and_its_sample_as_reference(
    v2: ReferenceEngine, v15: ReferenceEngine, voices: VoiceStore
) -> None:
    sample = _recording(v2, "样本", tone=5.0)
    voice = voices.create(ADMIN, "guide", "样本", sample.samples, sample.sample_rate, description="calm")
    assert _spoken(v2, SynthesisRequest(text="你好。", voice=voice, max_len=5)) == [("(calm)你好。", "reference")]
    own = SynthesisRequest(text="你好。", voice=voice, instructions="excited", max_len=5)
    assert _spoken(v2, own) == [("(excited)你好。", "reference")]  # the request's own description wins
    # VoxCPM 1.x cannot read a description: the sample and its transcript are a continuation prompt
    assert _spoken(v15, SynthesisRequest(text="你好。", voice=voice, max_len=5)) == [("你好。", "continuation")]


def test_a_saved_voice_with_a_reference_is_ref_continuation_on_voxcpm2(
    v2: ReferenceEngine, v15: ReferenceEngine, voices: VoiceStore
) -> None:
    prompt, reference = _recording(v2, "提示", tone=4.0), _recording(v2, None, tone=3.0)
    voice = voices.create(ADMIN, "both", "提示", prompt.samples, prompt.sample_rate, (reference.samples, 16000))
    assert _spoken(v2, SynthesisRequest(text="你好。", voice=voice, max_len=5)) == [("你好。", "ref_continuation")]
    styled = SynthesisRequest(text="你好。", voice=voice, instructions="calm", max_len=5)
    assert _spoken(v2, styled) == [("(calm)你好。", "reference")]
    assert _spoken(v15, SynthesisRequest(text="你好。", voice=voice, max_len=5)) == [("你好。", "continuation")]


@pytest.mark.parametrize(
    "request_fields,field",
    [
        ({"instructions": "warm", "prompt": "transcript"}, "instructions"),  # a continuation cannot be steered
        ({"reference": True, "prompt": None}, "prompt_text"),  # next to a reference, a prompt is a continuation
    ],
)
def test_what_voxcpm2_cannot_do_is_refused(v2: ReferenceEngine, request_fields: dict, field: str) -> None:
    fields = dict(request_fields)
    fields["prompt"] = _recording(v2, fields["prompt"])
    if fields.pop("reference", None):
        fields["reference"] = _recording(v2, None)
    with pytest.raises(ServiceError) as refused:
        joined(v2.generate(SynthesisRequest(text="不行。", **fields), streaming=True))
    assert refused.value.field == field


@pytest.mark.parametrize("field", ["instructions", "reference_audio"])
def test_voxcpm1_refuses_both_fields(v15: ReferenceEngine, field: str) -> None:
    given = {"instructions": "warm"} if field == "instructions" else {"reference": _recording(v15, None)}
    with pytest.raises(ServiceError) as refused:
        joined(v15.generate(SynthesisRequest(text="不行。", **given), streaming=True))
    assert refused.value.field == field and "VoxCPM2" in str(refused.value)


class TestOverHTTP:
    """Every new field through the real HTTP stack on /multi: VoxCPM1.5 (the default) and VoxCPM2."""

    @pytest.mark.parametrize("path", ["/api/tts/stream", "/api/tts"])
    def test_instructions_design_a_voice_on_voxcpm2(self, service: Service, path: str) -> None:
        data = {"text": "你好。", "max_len": 4, "model": V2_MODEL, "instructions": "a warm, slow voice"}
        response = requests.post(f"{service.multi_url}{path}", data=data)
        assert response.status_code == 200, response.text[:300]
        assert sf.info(io.BytesIO(response.content)).samplerate == 48000

    @pytest.mark.parametrize("path", ["/api/tts/stream", "/api/tts"])
    @pytest.mark.parametrize("field", ["instructions", "reference_audio"])
    def test_voxcpm1_refuses_them_naming_the_field_and_the_models_that_can(
        self, service: Service, reference_wav: Path, path: str, field: str
    ) -> None:
        data = {"text": "你好", "max_len": 3, **({"instructions": "warm"} if field == "instructions" else {})}
        with open(reference_wav, "rb") as audio:
            files = {field: audio} if field == "reference_audio" else None
            response = requests.post(f"{service.multi_url}{path}", data=data, files=files)
        assert response.status_code == 400
        error = error_of(response)
        assert error["field"] == field and V2_MODEL in error["message"], error

    def test_a_description_cannot_steer_a_continuation(self, service: Service, reference_wav: Path) -> None:
        with open(reference_wav, "rb") as audio:
            response = requests.post(
                f"{service.multi_url}/api/tts/stream",
                data={"text": "你好", "max_len": 3, "model": V2_MODEL, "instructions": "warm", "prompt_text": "参考"},
                files={"prompt_audio": audio},
            )
        assert response.status_code == 400
        error = error_of(response)
        assert error["field"] == "instructions" and "reference_audio" in error["message"], error

    @pytest.mark.parametrize(
        "data,files",
        [
            ({"instructions": "cheerful"}, ("reference_audio",)),  # cloning with a style
            ({"prompt_text": "参考音频"}, ("reference_audio", "prompt_audio")),  # reference + continuation
            ({"instructions": "cheerful"}, ("prompt_audio",)),  # no transcript: an isolated reference
        ],
    )
    def test_voxcpm2_takes_a_reference_with_a_description_or_a_continuation(
        self, service: Service, reference_wav: Path, data: dict, files: tuple[str, ...]
    ) -> None:
        uploads = {name: reference_wav.read_bytes() for name in files}
        response = requests.post(
            f"{service.multi_url}/api/tts/stream",
            data={"text": "克隆", "max_len": 4, "model": V2_MODEL, **data},
            files={name: ("ref.wav", content) for name, content in uploads.items()},
        )
        assert response.status_code == 200, response.text[:300]
        assert len(sf.read(io.BytesIO(response.content))[0]) == 4 * TINY_V2_STEP_FRAMES

    def test_a_prompt_next_to_a_reference_needs_its_transcript(self, service: Service, reference_wav: Path) -> None:
        content = reference_wav.read_bytes()
        response = requests.post(
            f"{service.multi_url}/api/tts/stream",
            data={"text": "克隆", "max_len": 3, "model": V2_MODEL},
            files={"reference_audio": ("r.wav", content), "prompt_audio": ("p.wav", content)},
        )
        assert response.status_code == 422
        assert error_of(response)["field"] == "prompt_text"

    def test_openai_route_passes_instructions_to_voxcpm2_and_ignores_them_on_voxcpm1(self, service: Service) -> None:
        body = {"model": "tts-1", "input": "你好", "voice": "alloy", "response_format": "pcm", "max_len": 3}
        body["instructions"] = "warm"
        styled = requests.post(f"{service.multi_url}/v1/audio/speech", json={**body, "model": V2_MODEL})
        assert styled.status_code == 200 and "x-ignored-fields" not in styled.headers
        ignored = requests.post(f"{service.multi_url}/v1/audio/speech", json=body)
        assert ignored.status_code == 200 and ignored.headers["x-ignored-fields"] == "instructions"


class TestSavedVoicesOverHTTP:
    """Voices with an isolated reference, and voices designed from a description, on /multi."""

    def test_a_designed_voice_is_listed_as_such_and_speaks(self, service: Service) -> None:
        data = {"name": "designed guide", "description": "a calm voice", "model": V2_MODEL, "text": "你好。"}
        created = requests.post(f"{service.multi_url}/api/voices", data=data)
        assert created.status_code == 201, created.text
        voice = created.json()
        assert (voice["kind"], voice["description"], voice["text"]) == ("designed", "a calm voice", "你好。")
        assert voice["seconds"] > 0 and voice["sample_rate"] == 48000
        listed = requests.get(f"{service.multi_url}/api/voices").json()["voices"]
        assert {"kind": "designed", "description": "a calm voice"}.items() <= next(
            v for v in listed if v["voice_id"] == voice["voice_id"]
        ).items()
        for model in (V2_MODEL, "voxcpm1.5-tiny-synthetic"):  # VoxCPM 1.x: the sample as a continuation prompt
            spoken = requests.post(
                f"{service.multi_url}/api/tts/stream",
                data={"text": "再见", "max_len": 3, "model": model, "voice_id": voice["voice_id"]},
            )
            assert spoken.status_code == 200, spoken.text[:300]

    def test_designing_needs_a_voxcpm2_model_and_no_recording(self, service: Service, reference_wav: Path) -> None:
        refused = requests.post(f"{service.multi_url}/api/voices", data={"name": "x", "description": "calm"})
        assert refused.status_code == 400
        assert error_of(refused)["field"] == "description" and V2_MODEL in error_of(refused)["message"]
        with open(reference_wav, "rb") as audio:
            both = requests.post(
                f"{service.multi_url}/api/voices",
                data={"name": "x", "description": "calm", "model": V2_MODEL},
                files={"audio": audio},
            )
        assert both.status_code == 422 and error_of(both)["field"] == "description"
        neither = requests.post(f"{service.multi_url}/api/voices", data={"name": "x"})
        assert neither.status_code == 422 and error_of(neither)["field"] == "audio"

    def test_a_voice_with_a_reference_and_a_continuation_prompt(self, service: Service, reference_wav: Path) -> None:
        content = reference_wav.read_bytes()
        created = requests.post(
            f"{service.multi_url}/api/voices",
            data={"name": "both recordings", "text": "参考音频的文本"},
            files={"audio": ("a.wav", content), "reference_audio": ("r.wav", content)},
        )
        assert created.status_code == 201, created.text
        assert created.json()["reference_seconds"] == pytest.approx(created.json()["seconds"])
        for model in (V2_MODEL, "voxcpm1.5-tiny-synthetic"):
            spoken = requests.post(
                f"{service.multi_url}/api/tts/stream",
                data={"text": "克隆", "max_len": 3, "model": model, "voice_id": created.json()["voice_id"]},
            )
            assert spoken.status_code == 200, spoken.text[:300]

    def test_cli_designs_and_lists_a_voice(self, service: Service) -> None:
        added = run(
            service.multi_url,
            "voices",
            "add",
            "cli guide",
            "--description",
            "calm",
            "--text",
            "你好。",
            "--model",
            V2_MODEL,
        )
        assert added.returncode == 0, added.stderr
        assert "designed: calm" in run(service.multi_url, "voices", "list").stdout
        refused = run(service.multi_url, "voices", "add", "cli guide", "--description", "calm")
        assert refused.returncode == 4 and "description" in refused.stderr
