"""Property and fuzz tests: no input a client can send gets a 5xx.

schemathesis generates requests from our own OpenAPI document (valid ones and, by mutating the
schema, invalid ones) against the real stack; hypothesis feeds the audio and text paths
arbitrary bytes, signals and Unicode. Case counts are bounded so `make test` stays fast.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.audio.decode import decode_mono
from serve_app.errors import ServiceError
from serve_app.ingress.server import create_app
from serve_app.text.sentences import split_sentences
from tests.conftest import BOUNDS

# Generation lengths a fuzzed request may ask for: the synthetic model runs to max_len, so larger
# values would only make the suite slow, not the test stronger (ranges are checked before this).
CAPS = {"max_len": 8, "min_len": 8, "inference_timesteps": 2, "retry_badcase_max_times": 1}
CASES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def jobs_cancelled_after(url: str) -> Iterator[None]:
    """The jobs the fuzzer submitted, cancelled and deleted, so they render nothing behind later tests."""
    yield
    for job in requests.get(f"{url}/api/jobs").json()["jobs"]:
        for _ in range(2):  # cancelled, then deleted
            requests.delete(f"{url}/api/jobs/{job['job_id']}")


# Our own OpenAPI document, as the service publishes it at /openapi.json.
schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, url: str, jobs_cancelled_after: None) -> None:
    if isinstance(case.body, dict):  # a form, OpenAI's body, a job's (its defaults and items)
        nested = [case.body.get("defaults"), *(case.body.get("items") or [])]
        for fields in [case.body, *(part for part in nested if isinstance(part, dict))]:
            for name, cap in CAPS.items():
                if isinstance(fields.get(name), int) and fields[name] > cap:
                    fields[name] = cap
    response = case.call(base_url=url, timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400 and response.status_code != 405:
        error = response.json()["error"]
        assert {"code", "message", "field"} <= set(error)  # /v1 routes add OpenAI's type and param
        assert "Traceback" not in error["message"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_refused_with_a_client_error(data: bytes) -> None:
    try:
        mono, rate = decode_mono(data, BOUNDS, "prompt_audio")
    except ServiceError as exc:
        assert exc.status in (400, 413, 415, 422) and exc.field == "prompt_audio"
    else:
        assert mono.dtype == np.float32 and mono.ndim == 1 and len(mono) and rate > 0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    channels=st.integers(1, 4),
    rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]),
    frames=st.integers(0, 4000),
    subtype=st.sampled_from(["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]),
    container=st.sampled_from(["WAV", "FLAC", "OGG"]),
    truncate=st.booleans(),
)
def test_any_rate_depth_channels_and_length_is_read_as_mono(
    channels: int, rate: int, frames: int, subtype: str, container: str, truncate: bool
) -> None:
    if container == "FLAC" and subtype in ("PCM_32", "FLOAT", "DOUBLE", "PCM_U8"):
        subtype = "PCM_16"
    if container == "OGG":
        subtype = "VORBIS"
    signal = np.random.default_rng(frames).uniform(-0.5, 0.5, (frames, channels))
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, subtype=subtype, format=container)
    data = buffer.getvalue()
    if truncate:
        data = data[: len(data) // 2]
    try:
        mono, got_rate = decode_mono(data, BOUNDS, "prompt_audio")
    except ServiceError as exc:
        assert exc.status in (415, 422), exc  # empty, or truncated past decoding
    else:
        assert got_rate == rate and mono.ndim == 1 and mono.dtype == np.float32
        assert len(mono) <= frames and np.isfinite(mono).all()


def test_very_long_reference_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 61, np.int16), 16000)
    with pytest.raises(ServiceError) as refused:
        decode_mono(path.read_bytes(), BOUNDS, "prompt_audio")
    assert refused.value.status == 422 and "61.0 s" in refused.value.message


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=2000))
def test_sentences_keep_every_visible_character(text: str) -> None:
    sentences = split_sentences(text)
    assert all(len(sentence) <= 160 for sentence in sentences if sentence != text.strip())
    assert "".join("".join(sentences).split()) == "".join(text.split())


@pytest.mark.parametrize(
    "text",
    [
        "😀🎉👍🏽 emoji only",
        "مرحبا بالعالم، هذا نص من اليمين إلى اليسار.",
        "\u202ereversed\u202c and \u200bzero width",
        "control\x00\x07\x1b[31m characters",
        "。！？…，",
        "?!.",
        "a" * 4999,
    ],
)
def test_unicode_edge_cases_stream(url: str, text: str) -> None:
    response = requests.post(f"{url}/api/tts/stream", data={"text": text, "max_len": 4}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert response.content[:4] == b"RIFF"


@pytest.mark.parametrize("text", ["\x00\x01\x02", "\x1b\x7f \t\n"])
def test_text_of_only_control_characters_is_422(url: str, text: str) -> None:
    response = requests.post(f"{url}/api/tts/stream", data={"text": text})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "text"


def test_100k_characters_is_413(url: str) -> None:
    response = requests.post(f"{url}/api/tts/stream", data={"text": "长" * 100_000})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "text"


@pytest.mark.parametrize(
    "body",
    [
        b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi',  # never closed
        b"garbage without any boundary",
        b"--b\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--b--\r\n",
    ],
)
def test_malformed_multipart_is_a_client_error(url: str, body: bytes) -> None:
    response = requests.post(
        f"{url}/api/tts/stream", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code in (400, 422), response.text[:200]
    assert set(response.json()["error"]) == {"code", "message", "field"}
