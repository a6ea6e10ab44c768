"""Access control and the edge: API keys, rate limit, CORS, Serve's client headers, body caps."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve_app.config import API_KEYS_ENV, LimitsConfig
from tests.conftest import Service, config_port, error_of, extra_app

CONFIG_KEY, ENV_KEY, RATE_KEY = "config-key-0123456789", "env-key-0123456789", "rate-key-0123456789"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def secure_url(service: Service, checkpoints: Path) -> Iterator[str]:
    access = {"api_keys": [CONFIG_KEY, RATE_KEY], "rate_limit": "5/minute", "cors_allow_origins": [ORIGIN]}
    ingress_env = {"runtime_env": {"env_vars": {API_KEYS_ENV: f" {ENV_KEY} ,"}}, "num_cpus": 0.25}
    with extra_app(
        service, checkpoints, "secure", {"access": access}, {"TTSIngress": {"ray_actor_options": ingress_env}}
    ) as url:
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class TestApiKey:
    @pytest.mark.parametrize(
        "headers",
        [{}, bearer("wrong"), {"Authorization": CONFIG_KEY}, {"Authorization": f"Basic {CONFIG_KEY}"}, bearer("")],
    )
    def test_missing_or_wrong_key_is_401(self, secure_url: str, headers: dict[str, str]) -> None:
        response = requests.post(f"{secure_url}/api/tts/stream", data={"text": "你好"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(response) == {
            "code": "unauthorized",
            "message": "a valid API key is required: Authorization: Bearer <key>",
            "field": "authorization",
        }

    @pytest.mark.parametrize("key", [CONFIG_KEY, ENV_KEY])
    def test_a_configured_key_or_one_from_the_environment_is_let_in(self, secure_url: str, key: str) -> None:
        response = requests.post(
            f"{secure_url}/api/tts/stream", data={"text": "你好", "max_len": 2}, headers=bearer(key)
        )
        assert response.status_code == 200, response.text[:200]
        assert response.content[:4] == b"RIFF"

    def test_every_api_route_needs_the_key(self, secure_url: str) -> None:
        for method, path in [("GET", "/api/voices"), ("GET", "/api/gpu/status"), ("GET", "/v1/models")]:
            assert requests.request(method, f"{secure_url}{path}").status_code == 401, path
        response = requests.post(f"{secure_url}/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "x"})
        assert response.status_code == 401

    def test_probes_docs_and_the_page_need_none(self, secure_url: str) -> None:
        for path in ["/health", "/ready", "/openapi.json", "/docs", "/"]:
            assert requests.get(f"{secure_url}{path}").status_code == 200, path

    def test_off_by_default(self, url: str) -> None:
        assert requests.get(f"{url}/api/voices").status_code == 200


def test_rate_limit_per_key_answers_429_with_retry_after(secure_url: str) -> None:
    answers = [requests.get(f"{secure_url}/api/voices", headers=bearer(RATE_KEY)) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert error_of(answers[-1])["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    # another key has its own allowance
    assert requests.get(f"{secure_url}/api/voices", headers=bearer(ENV_KEY)).status_code == 200


class TestCors:
    def test_a_configured_origin_may_call_from_a_page(self, secure_url: str) -> None:
        preflight = requests.options(
            f"{secure_url}/api/tts/stream",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        response = requests.get(f"{secure_url}/health", headers={"Origin": ORIGIN})
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "X-Request-ID" in response.headers["access-control-expose-headers"].replace("Id", "ID")

    def test_other_origins_are_not_allowed(self, secure_url: str, url: str) -> None:
        response = requests.get(f"{secure_url}/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
        # none configured (the default): no cross-origin access at all
        response = requests.get(f"{url}/health", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "header",
    [
        ("x-request-timeout-seconds", "0"),
        ("x-request-timeout-seconds", "99999"),
        ("x-request-disconnect-disabled", "?1"),
    ],
)
def test_serve_control_headers_are_refused(url: str, header: tuple[str, str]) -> None:
    """Ray's proxy would let these lift the end-to-end timeout and disconnect cancellation."""
    response = requests.post(f"{url}/api/tts/stream", data={"text": "你好"}, headers=dict([header]))
    assert response.status_code == 400
    assert error_of(response)["field"] == header[0]


def read_answer(conn: socket.socket, already: bytes = b"") -> bytes:
    """One HTTP answer with a Content-Length, read off a raw socket."""
    answer = already
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
        piece = conn.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


def content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class TestBodyCap:
    LIMIT = LimitsConfig().max_request_bytes

    def test_a_2gb_upload_is_refused_from_its_length_before_any_body_is_sent(self, url: str) -> None:
        head = (
            "POST /api/tts/stream HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2147483648\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", config_port()), timeout=20) as conn:
            conn.sendall(head.encode())
            answer = read_answer(conn).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert '"field":"body"' in answer

    def test_a_2gb_upload_without_a_length_is_cut_off_at_the_cap(self, url: str) -> None:
        """Chunked: the service reads up to the cap, answers 413, and stops reading."""
        part = b'--b\r\nContent-Disposition: form-data; name="prompt_audio"; filename="big.wav"\r\n\r\n'
        block = b"\0" * (1 << 20)
        sent = 0
        with socket.create_connection(("127.0.0.1", config_port()), timeout=20) as conn:
            conn.sendall(
                b"POST /api/tts/stream HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            conn.setblocking(False)
            answer = b""
            deadline = time.monotonic() + 60
            while sent < 2 << 30 and time.monotonic() < deadline:
                try:
                    answer += conn.recv(65536)
                except BlockingIOError:
                    pass
                except OSError:
                    break
                if answer:
                    break
                try:
                    conn.settimeout(1)
                    conn.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                    conn.setblocking(False)
                    sent += len(block)
                except OSError:  # the service closed the connection after answering
                    break
            conn.settimeout(10)
            try:
                answer = read_answer(conn, answer)
            except OSError:
                pass
        assert sent < 20 * self.LIMIT, f"{sent} bytes accepted"
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"field":"body"' in answer

    def test_the_cap_leaves_room_for_the_largest_allowed_reference(self) -> None:
        limits = LimitsConfig()
        assert limits.max_request_bytes > limits.max_prompt_audio_bytes + 4 * limits.max_text_chars
