"""OpenAI-compatible speech through the real stack, with the official openai client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from serve_app.audio.codecs import AudioFormat
from tests.conftest import TINY_V15_STEP_FRAMES, error_of
from tests.test_codecs import decode

TEXT = "你好，这是流式语音合成。" * 10


@pytest.fixture(scope="module")
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed-locally")


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "flac", "pcm"])
def test_official_client_streams_every_format(client: OpenAI, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"speech.{fmt}"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=TEXT,
        response_format=fmt,
        extra_body={"max_len": 12},  # type: ignore[arg-type]
    ) as response:
        pieces = list(response.iter_bytes())
        rate = int(response.headers["x-sample-rate"])
    out.write_bytes(b"".join(pieces))
    assert rate == (24000 if fmt == "pcm" else 48000 if fmt == "opus" else 44100)
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
        ({"speed": 1.5}, 400, "speed"),
        ({"instructions": "speak cheerfully"}, 400, "instructions"),
        ({"model": "no-such-model"}, 404, "model"),
        ({"voice": "no-such-voice"}, 404, "voice"),
        ({"response_format": "ogg"}, 422, "response_format"),
        ({"stream_format": "websocket"}, 422, "stream_format"),
        ({"input": "  "}, 422, "input"),
        ({"input": "字" * 5001}, 413, "input"),
        ({"cfg_value": 9}, 422, "cfg_value"),
        ({"min_len": 10, "max_len": 5}, 422, "max_len"),
    ],
)
def test_refusals_name_the_field(url: str, extra: dict, status: int, field: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "hello", **extra}
    response = requests.post(f"{url}/v1/audio/speech", json=body)
    assert response.status_code == status, response.text
    assert error_of(response)["field"] == field


def test_malformed_json_is_a_clear_error(url: str) -> None:
    response = requests.post(f"{url}/v1/audio/speech", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    error_of(response)
