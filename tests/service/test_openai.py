"""OpenAI-compatible speech through the real stack, with the official openai client."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile as sf
from openai import BadRequestError, NotFoundError, OpenAI

from serve_app.audio.codecs import AudioFormat
from serve_app.ingress.openai_schemas import OPENAI_MODELS, OPENAI_VOICES
from tests.conftest import (
    TINY_V15_STEP_FRAMES,
    V2_MODEL,
    Service,
    decode,
    error_of,
    extra_app,
    openai_error_of,
    prompt_cache,
    save_voice,
)

TEXT = "你好，这是流式语音合成。" * 10
SHORT = {"model": "tts-1", "voice": "alloy", "input": "你好", "response_format": "pcm", "max_len": 3}


@pytest.fixture(scope="module")
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed-locally")


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "flac", "pcm", "ulaw"])
def test_official_client_streams_every_format(client: OpenAI, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"speech.{fmt}"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=TEXT,
        response_format=fmt,  # type: ignore[arg-type]  # ulaw: ours, beside OpenAI's
        extra_body={"max_len": 12},  # type: ignore[arg-type]
    ) as response:
        pieces = list(response.iter_bytes())
        rate = int(response.headers["x-sample-rate"])
    out.write_bytes(b"".join(pieces))
    assert rate == {"pcm": 24000, "opus": 48000, "ulaw": 8000}.get(fmt, 44100)
    decoded_rate, seconds = decode(out.read_bytes(), AudioFormat(fmt), rate)
    assert decoded_rate == rate
    assert seconds == pytest.approx(12 * TINY_V15_STEP_FRAMES / 44100, abs=0.06)


def test_sse_sends_deltas_then_done(url: str) -> None:
    response = requests.post(
        f"{url}/v1/audio/speech",
        json={
            "model": "tts-1",
            "voice": "nova",
            "input": TEXT,
            "response_format": "pcm",
            "stream_format": "sse",
            "max_len": 6,
        },
        stream=True,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in response.iter_lines(decode_unicode=True)
        if line.startswith("data: ")
    ]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) // 2 == pytest.approx(6 * TINY_V15_STEP_FRAMES * 24000 / 44100, abs=2)


def test_models_lists_the_served_model(client: OpenAI, url: str) -> None:
    served = requests.get(f"{url}/health").json()["models"][0]["name"]
    assert [m.id for m in client.models.list()] == [served]
    response = requests.post(
        f"{url}/v1/audio/speech",
        json={"model": served, "voice": "alloy", "input": "hi", "response_format": "wav", "max_len": 3},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "extra,status,field",
    [
        ({"speed": 2.5}, 400, "speed"),
        ({"speed": 0.25}, 400, "speed"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"voice": "no-such-voice"}, 404, "voice"),
        ({"voice": {"id": "no-such-voice"}}, 404, "voice"),
        ({"response_format": "ogg"}, 422, "response_format"),
        ({"stream_format": "websocket"}, 422, "stream_format"),
        ({"input": "  "}, 422, "input"),
        ({"input": "字" * 5001}, 413, "input"),
        ({"cfg_value": 9}, 422, "cfg_value"),
        ({"min_len": 10, "max_len": 5}, 422, "max_len"),
    ],
)
def test_refusals_name_the_field_in_openais_shape(url: str, extra: dict, status: int, field: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "hello", **extra}
    response = requests.post(f"{url}/v1/audio/speech", json=body)
    assert response.status_code == status, response.text
    error = openai_error_of(response)
    assert error["field"] == field
    assert error["type"] == "invalid_request_error"


def test_speed_out_of_range_states_the_range(url: str) -> None:
    response = requests.post(
        f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "hi", "speed": 4}
    )
    assert "between 0.5 and 2.0" in openai_error_of(response)["message"]


def test_the_sdk_raises_its_own_exceptions_from_our_errors(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.audio.speech.create(model="tts-1", voice="no-such-voice", input="hi")
    assert caught.value.body["param"] == "voice"  # type: ignore[index]
    with pytest.raises(BadRequestError) as refused:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=3.0)
    assert refused.value.body["param"] == "speed"  # type: ignore[index]


def test_malformed_json_is_400_naming_the_error_and_its_position(url: str) -> None:
    response = requests.post(f"{url}/v1/audio/speech", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = openai_error_of(response)
    assert (error["code"], error["field"]) == ("invalid_json", "body")
    assert "position 1" in error["message"] and "property name" in error["message"], error["message"]


def test_native_routes_keep_their_error_shape(url: str) -> None:
    response = requests.post(f"{url}/api/tts/stream", data={"text": "x", "speed": "3"})
    assert response.status_code == 400
    assert error_of(response)["field"] == "speed"


class TestFieldsTheModelCannotHonour:
    """`instructions` on VoxCPM 1.x: ignored and named in a header on /v1 (unless strict)."""

    def test_ignored_and_named_in_a_header(self, url: str) -> None:
        response = requests.post(f"{url}/v1/audio/speech", json={**SHORT, "instructions": "speak cheerfully"})
        assert response.status_code == 200, response.text
        assert response.headers["x-ignored-fields"] == "instructions"

    @pytest.mark.parametrize("absent", ["", "  ", "None", None])
    def test_empty_and_the_string_none_count_as_absent(self, url: str, absent: str | None) -> None:
        response = requests.post(f"{url}/v1/audio/speech", json={**SHORT, "instructions": absent})
        assert response.status_code == 200, response.text
        assert "x-ignored-fields" not in response.headers

    def test_voxcpm2_takes_them(self, service: Service) -> None:
        response = requests.post(
            f"{service.multi_url}/v1/audio/speech",
            json={**SHORT, "model": V2_MODEL, "instructions": "a warm, slow voice"},
        )
        assert response.status_code == 200, response.text
        assert "x-ignored-fields" not in response.headers

    def test_native_routes_stay_strict(self, url: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data={"text": "x", "instructions": "speak cheerfully"})
        assert response.status_code in (400, 422)
        assert error_of(response)["field"] == "instructions"


class TestDeploymentSettings:
    """One more app with `openai: {strict: true, voices: {...}}`: the voice map and the strict policy."""

    @pytest.fixture(scope="class")
    def mapped(self, service: Service, checkpoints: Path, reference_wav: Path) -> Iterator[tuple[str, dict]]:
        voice = save_voice(service.url, reference_wav, name="Pipecat Narrator")
        settings = {"openai": {"strict": True, "voices": {"Alloy": "pipecat narrator", "echo": "gone"}}}
        with extra_app(service, checkpoints, "openai-settings", args_overrides=settings) as app_url:
            yield app_url, voice

    def test_strict_refuses_instructions(self, mapped: tuple[str, dict]) -> None:
        response = requests.post(f"{mapped[0]}/v1/audio/speech", json={**SHORT, "instructions": "cheerfully"})
        assert response.status_code == 400
        assert openai_error_of(response)["field"] == "instructions"
        assert "VoxCPM2" in openai_error_of(response)["message"]

    @pytest.mark.parametrize("voice", ["alloy", "ALLOY", {"id": "Alloy"}])
    def test_a_mapped_name_speaks_with_the_saved_voice(self, mapped: tuple[str, dict], voice: object) -> None:
        app_url = mapped[0]
        before = sum(prompt_cache(app_url))
        response = requests.post(f"{app_url}/v1/audio/speech", json={**SHORT, "voice": voice})
        assert response.status_code == 200, response.text
        assert sum(prompt_cache(app_url)) == before + 1  # the saved voice's prompt was looked up

    def test_an_unmapped_name_speaks_with_the_default_voice(self, mapped: tuple[str, dict]) -> None:
        app_url = mapped[0]
        before = sum(prompt_cache(app_url))
        assert requests.post(f"{app_url}/v1/audio/speech", json={**SHORT, "voice": "Nova"}).status_code == 200
        assert sum(prompt_cache(app_url)) == before

    def test_a_name_mapped_to_a_missing_voice_is_404_saying_so(self, mapped: tuple[str, dict]) -> None:
        response = requests.post(f"{mapped[0]}/v1/audio/speech", json={**SHORT, "voice": "echo"})
        assert response.status_code == 404
        assert "mapped to the shared voice 'gone'" in openai_error_of(response)["message"]

    def test_voices_list_says_what_each_name_speaks_with(self, mapped: tuple[str, dict]) -> None:
        app_url, voice = mapped
        listed = {v["id"]: v for v in requests.get(f"{app_url}/v1/audio/voices").json()["voices"]}
        assert listed["alloy"]["voice_id"] == voice["voice_id"] and listed["alloy"]["maps_to"] == "pipecat narrator"
        assert listed["echo"]["voice_id"] is None and listed["nova"]["maps_to"] is None
        assert listed[voice["voice_id"]]["name"] == "Pipecat Narrator" and listed[voice["voice_id"]]["kind"] == "saved"


class TestListings:
    def test_models_retrieve_accepts_served_and_openai_ids(self, client: OpenAI, url: str) -> None:
        served = client.models.list().data[0].id
        assert client.models.retrieve(served).id == served
        alias = client.models.retrieve("gpt-4o-mini-tts-2025-12-15")
        assert alias.id == "gpt-4o-mini-tts-2025-12-15" and alias.model_extra["alias_of"] == served  # type: ignore[index]
        with pytest.raises(NotFoundError):
            client.models.retrieve("gpt-5")

    @pytest.mark.parametrize("model", [*OPENAI_MODELS, "gpt-4o-mini-tts-2025-12-15", "gpt-4o-mini-tts-2025-03-20"])
    def test_every_openai_model_id_names_the_default_model(self, url: str, model: str) -> None:
        response = requests.post(f"{url}/v1/audio/speech", json={**SHORT, "model": model})
        assert response.status_code == 200, response.text

    def test_audio_models_and_voices_in_kokoro_fastapis_shape(self, url: str, reference_wav: Path) -> None:
        voice = save_voice(url, reference_wav, name="listed")
        models = requests.get(f"{url}/v1/audio/models").json()["models"]
        assert {"tts-1", "gpt-4o-mini-tts"} <= {m["id"] for m in models}
        voices = requests.get(f"{url}/v1/audio/voices").json()["voices"]
        assert all({"id", "name"} <= set(v) for v in voices)
        assert {v["id"] for v in voices} >= {*OPENAI_VOICES, voice["voice_id"]}


def test_openapi_documents_the_errors_actually_sent(url: str) -> None:
    spec = requests.get(f"{url}/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    speech = spec["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert {"400", "401", "404", "413", "422", "429", "503"} <= set(speech)
    assert speech["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorBody")
    tts = spec["paths"]["/api/tts/stream"]["post"]["responses"]
    assert {"400", "401", "404", "413", "415", "422", "429", "503"} <= set(tts)
    assert tts["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(spec["components"]["schemas"]["OpenAIErrorDetail"]["properties"]) == {
        "code",
        "message",
        "field",
        "type",
        "param",
    }


class TestSpeed:
    """`speed` time-stretches what the model made: the same frames, played faster or slower."""

    @pytest.mark.parametrize("speed", [0.5, 1.25, 2.0])
    def test_the_stream_lasts_its_length_over_speed(self, url: str, speed: float) -> None:
        response = requests.post(f"{url}/v1/audio/speech", json={**SHORT, "max_len": 12, "speed": speed})
        assert response.status_code == 200, response.text
        model_frames = 12 * TINY_V15_STEP_FRAMES
        assert len(response.content) // 2 == pytest.approx(model_frames / speed * 24000 / 44100, abs=2)

    def test_whole_files_and_native_streams_take_it_as_a_form_field(self, url: str) -> None:
        whole = requests.post(
            f"{url}/api/tts", data={"text": "你好", "max_len": 6, "speed": "0.5", "retry_badcase": "false"}
        )
        assert whole.status_code == 200, whole.text
        data, _ = sf.read(io.BytesIO(whole.content), dtype="int16")
        assert len(data) == 2 * 6 * TINY_V15_STEP_FRAMES
        streamed = requests.post(f"{url}/api/tts/stream", data={"text": "你好", "max_len": 6, "speed": "2"})
        assert len(streamed.content) == 44 + 6 * TINY_V15_STEP_FRAMES // 2 * 2
