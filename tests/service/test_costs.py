"""Costs checked before they are paid, through the real stack: the parts a form route takes, lookup keys
bounded before any lookup, errors that quote a client only in a short excerpt, and the one route that holds
a whole answer in memory bounded in audio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve_app.ingress.schemas import MAX_NAME_CHARS
from tests.conftest import Service, error_of, extra_app, openai_error_of

HUGE_KEY = "v" * 20_000  # an 8 MB key, smaller: within a form field's bytes, past the 100 characters of a key


@pytest.mark.parametrize(
    ("path", "files", "fields"),
    [
        ("/api/voices", 3, {"name": "three files", "text": "x"}),  # audio and reference_audio: two at most
        ("/api/adapters", 120, {"name": "many parts"}),  # weights: one
        ("/api/tts", 3, {"text": "你好"}),  # prompt_audio and reference_audio
    ],
)
def test_a_form_part_past_what_the_route_takes_is_refused(
    url: str, reference_wav: Path, path: str, files: int, fields: dict[str, str]
) -> None:
    parts = [(f"file{n}", (f"f{n}.wav", reference_wav.read_bytes())) for n in range(files)]
    answer = requests.post(f"{url}{path}", data=fields, files=parts, timeout=60)
    assert answer.status_code == 413, answer.text
    error = error_of(answer)
    assert error["field"] == "body" and "Too many files" in error["message"]


def test_too_many_fields_and_a_field_longer_than_any_text_are_refused(url: str) -> None:
    many = {f"field{n}": "x" for n in range(40)}
    for body in ({"text": "你好", **many},):
        multipart = requests.post(f"{url}/api/tts", files={k: (None, v) for k, v in body.items()}, timeout=60)
        assert multipart.status_code == 413 and error_of(multipart)["field"] == "body"
        urlencoded = requests.post(f"{url}/api/tts", data=body, timeout=60)
        assert urlencoded.status_code == 413 and error_of(urlencoded)["field"] == "body"
    long_field = requests.post(f"{url}/api/tts", files={"text": (None, "x" * 300_000)}, timeout=60)
    assert long_field.status_code == 413 and error_of(long_field)["field"] == "text"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field"),
    [
        ("post", "/api/tts", {"data": {"text": "你好", "voice_id": HUGE_KEY}}, "voice_id"),
        ("post", "/api/tts", {"data": {"text": "你好", "adapter": HUGE_KEY}}, "adapter"),
        ("post", "/api/tts/stream", {"data": {"text": "你好", "model": HUGE_KEY}}, "model"),
        ("get", f"/api/voices/{HUGE_KEY[:5000]}", {}, "voice_id"),
        ("delete", f"/api/adapters/{HUGE_KEY[:5000]}", {}, "adapter_id"),
    ],
)
def test_lookup_keys_are_bounded_first_and_never_echoed_whole(
    url: str, method: str, path: str, kwargs: dict, field: str
) -> None:
    answer = getattr(requests, method)(f"{url}{path}", timeout=60, **kwargs)
    assert answer.status_code == 422, answer.text[:300]
    assert error_of(answer)["field"] == field and str(MAX_NAME_CHARS) in error_of(answer)["message"]
    assert len(answer.content) < 2000


def test_openai_voice_and_model_are_bounded_too(url: str) -> None:
    for body, field in (
        ({"model": "tts-1", "input": "hi", "voice": HUGE_KEY}, "voice"),
        ({"model": "tts-1", "input": "hi", "voice": {"id": HUGE_KEY}}, "voice"),
        ({"model": HUGE_KEY, "input": "hi", "voice": "alloy"}, "model"),
    ):
        answer = requests.post(f"{url}/v1/audio/speech", json=body, timeout=60)
        assert answer.status_code == 422 and openai_error_of(answer)["param"] == field
        assert len(answer.content) < 2000


def test_prompt_text_is_bounded_like_text(url: str, reference_wav: Path) -> None:
    with open(reference_wav, "rb") as audio:
        answer = requests.post(
            f"{url}/api/tts",
            data={"text": "你好", "prompt_text": "长" * 5001},
            files={"prompt_audio": audio},
            timeout=60,
        )
    assert answer.status_code == 413 and error_of(answer)["field"] == "prompt_text"


@pytest.fixture(scope="module")
def short_timestamps_url(service: Service, checkpoints: Path) -> Iterator[str]:
    with extra_app(service, checkpoints, "short-timestamps", {"limits": {"max_timestamped_audio_s": 0.05}}) as url:
        yield url


def test_with_timestamps_is_bounded_in_audio(short_timestamps_url: str) -> None:
    form = {"text": "你好，这是一个长一点的句子。", "min_len": 20, "max_len": 40}
    answer = requests.post(f"{short_timestamps_url}/api/tts/with-timestamps", data=form, timeout=120)
    assert answer.status_code == 413 and error_of(answer)["field"] == "text"
    assert "stream it" in error_of(answer)["message"]
    within = requests.post(
        f"{short_timestamps_url}/api/tts/with-timestamps",
        data={"text": "你好", "min_len": 1, "max_len": 1},
        timeout=120,
    )
    assert within.status_code == 200 and within.json()["audio_base64"]
