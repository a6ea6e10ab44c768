"""Mistakes a new user makes get an answer that names the mistake: the wrong content type, a field that is not
UTF-8, text the model cannot speak, the wrong method, an empty body, a trailing slash; never a 500."""

from __future__ import annotations

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import route_error_of

FORM_ROUTES = ["/api/tts/stream", "/api/tts"]
SHORT = {"max_len": "4"}


@pytest.mark.parametrize("route", [*FORM_ROUTES, "/api/voices"])
def test_json_sent_to_a_form_endpoint_is_415_naming_the_accepted_types(url: str, route: str) -> None:
    response = requests.post(f"{url}{route}", json={"text": "Hello", "name": "x"}, timeout=30)
    assert response.status_code == 415
    error = route_error_of(response)
    assert error["field"] == "content-type" and error["code"] == "unsupported_media"
    assert "multipart/form-data" in error["message"] and "application/x-www-form-urlencoded" in error["message"]
    assert "not application/json" in error["message"]


@pytest.mark.parametrize("route", FORM_ROUTES)
def test_a_body_of_another_type_is_415(url: str, route: str) -> None:
    response = requests.post(f"{url}{route}", data=b"Hello", headers={"Content-Type": "text/plain"}, timeout=30)
    assert response.status_code == 415 and route_error_of(response)["field"] == "content-type"


@pytest.mark.parametrize("route", FORM_ROUTES)
@pytest.mark.parametrize("field", ["text", "prompt_text"])
def test_a_multipart_field_that_is_not_utf8_is_400_naming_it(url: str, route: str, field: str) -> None:
    fields = {"text": (None, "Hello"), **{name: (None, value) for name, value in SHORT.items()}}
    fields[field] = (None, b"caf\xe9 \xff")  # Latin-1, not UTF-8
    response = requests.post(f"{url}{route}", files=fields, timeout=60)
    assert response.status_code == 400, response.text[:300]
    error = route_error_of(response)
    assert error["field"] == field and "not valid utf-8" in error["message"]


@pytest.mark.parametrize("route", FORM_ROUTES)
def test_an_urlencoded_field_that_is_not_utf8_is_400_naming_it(url: str, route: str) -> None:
    response = requests.post(
        f"{url}{route}",
        data=b"max_len=4&text=caf%E9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 400, response.text[:300]
    assert route_error_of(response)["field"] == "text"


SPEECH_ROUTES = {
    "/api/tts/stream": lambda text: {"data": {"text": text, **SHORT}},
    "/api/tts": lambda text: {"data": {"text": text, **SHORT}},
    "/v1/audio/speech": lambda text: {"json": {"model": "tts-1", "input": text, "voice": "alloy", "max_len": 4}},
}


@pytest.mark.parametrize("route", SPEECH_ROUTES)
@pytest.mark.parametrize("text", ["😀😀", "♪♪♪", "\u200b\u200b"])
def test_text_the_tokenizer_reduces_to_nothing_is_400_on_every_route(url: str, route: str, text: str) -> None:
    response = requests.post(f"{url}{route}", timeout=60, **SPEECH_ROUTES[route](text))
    assert response.status_code == 400, response.text[:300]
    error = route_error_of(response)
    assert error["field"] == "text" and "nothing voxcpm can speak" in error["message"]


def test_a_sentence_the_model_cannot_speak_is_skipped_not_a_500(url: str) -> None:
    response = requests.post(f"{url}/api/tts", data={"text": "Hello. 😀😀! Bye.", **SHORT}, timeout=60)
    assert response.status_code == 200, response.text[:300]


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=st.text(min_size=1, max_size=12), route=st.sampled_from(sorted(SPEECH_ROUTES)))
def test_text_from_all_of_unicode_never_gets_a_server_error(url: str, text: str, route: str) -> None:
    response = requests.post(f"{url}{route}", timeout=60, **SPEECH_ROUTES[route](text))
    assert response.status_code < 500, (route, text, response.text[:300])
    if response.status_code >= 400:
        assert route_error_of(response)["field"] in ("text", "input"), (route, text, response.text[:300])


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/api/tts"),
        ("GET", "/api/tts/stream"),
        ("PUT", "/api/voices"),
        ("GET", "/v1/audio/speech"),
        ("POST", "/health"),
        ("POST", "/v1/models"),
        ("DELETE", "/api/voices"),
    ],
)
def test_the_wrong_method_is_405_as_json_naming_the_allowed_ones(url: str, method: str, route: str) -> None:
    response = requests.request(method, f"{url}{route}", timeout=30)
    assert response.status_code == 405
    assert route_error_of(response)["code"] == "method_not_allowed"
    assert response.headers["allow"]


@pytest.mark.parametrize(("route", "field"), [*((route, "text") for route in FORM_ROUTES), ("/api/voices", "name")])
def test_an_empty_body_names_the_missing_field(url: str, route: str, field: str) -> None:
    """A saved voice needs a name first: its recording or its description come after (designed voices)."""
    response = requests.post(f"{url}{route}", timeout=30)
    assert response.status_code == 422
    assert route_error_of(response)["field"] == field


def test_an_empty_json_body_on_the_openai_route_is_a_client_error(url: str) -> None:
    response = requests.post(f"{url}/v1/audio/speech", headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500
    route_error_of(response)


@pytest.mark.parametrize(("method", "route"), [("POST", "/api/tts/"), ("GET", "/health/"), ("GET", "/v1/models/")])
def test_a_trailing_slash_is_redirected_to_the_route(url: str, method: str, route: str) -> None:
    response = requests.request(method, f"{url}{route}", allow_redirects=False, timeout=30)
    assert response.status_code == 307
    assert response.headers["location"].endswith(route.rstrip("/"))


def test_an_unknown_path_is_404_as_json(url: str) -> None:
    response = requests.get(f"{url}/api/nothing-here", timeout=30)
    assert response.status_code == 404 and route_error_of(response)["code"] == "not_found"
