"""The edge in-process: loopback clients, anonymous access asked for, per-key caps held until an answer ends."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AppConfig
from serve_app.ingress.auth import Keyring
from serve_app.ingress.edge import build_chain, is_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.0.2.2", False),
        ("::ffff:10.0.0.1", False),
        ("unknown", False),
        ("", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def edge_answer(
    access: dict,
    client: str,
    path: str = "/api/voices",
    method: str = "GET",
    length: int = 0,
    limits: dict | None = None,
) -> int:
    """The status the edge gives a request from ``client`` whose body says it is ``length`` bytes (an app behind
    it answers 200)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = AppConfig.model_validate({"access": access, "limits": limits or {}})
    chain = build_chain(app, config, Keyring(config.access), lambda: False)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(length).encode())] if length else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "client": (client, 5000)}
    asyncio.run(chain(scope, receive, send))  # type: ignore[arg-type]
    return sent[0]["status"]


def test_per_key_cap_on_requests_holds_until_the_answer_ends() -> None:
    release = asyncio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()  # a stream still sending
        await send({"type": "http.response.body", "body": b""})

    config = AppConfig.model_validate({"access": {"api_keys": ["a=one", "two"], "max_requests_per_key": 1}})
    chain = build_chain(slow_app, config, Keyring(config.access), lambda: False)

    async def post(key: str, path: str = "/api/tts/stream") -> int:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            sent.append(message)

        headers = [(b"authorization", f"Bearer {key}".encode())]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": ("10.0.0.1", 1)}
        await chain(scope, receive, send)  # type: ignore[arg-type]
        return sent[0]["status"]

    async def scenario() -> list[int]:
        held = asyncio.create_task(post("one"))
        await asyncio.sleep(0.01)  # inside the app, answering
        refused = await post("one")  # refused at the edge, without waiting
        other_key, other_route = asyncio.create_task(post("two")), asyncio.create_task(post("one", "/api/voices"))
        await asyncio.sleep(0.01)
        release.set()
        return [await held, refused, await other_key, await other_route, await post("one")]

    assert asyncio.run(scenario()) == [200, 429, 200, 200, 200]


def test_anonymous_access_must_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (API_KEYS_ENV, ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV):
        monkeypatch.delenv(env, raising=False)
    assert edge_answer({}, "127.0.0.1") == 200
    assert edge_answer({}, "10.1.2.3") == 401
    assert edge_answer({}, "10.1.2.3", "/ready") == 200
    assert edge_answer({"allow_anonymous": True}, "10.1.2.3") == 200
    monkeypatch.setenv(ALLOW_ANONYMOUS_ENV, "1")
    assert edge_answer({}, "10.1.2.3") == 200


@pytest.mark.parametrize(
    ("method", "path", "length", "status"),
    [
        ("POST", "/api/adapters", 3_000_000, 200),  # past the reference-audio cap, within the adapter cap
        ("POST", "/api/adapters", 4_200_000, 413),  # past the adapter cap
        ("POST", "/api/voices", 3_000_000, 413),  # the larger cap is the adapter upload's only
        ("POST", "/api/tts", 3_000_000, 413),
    ],
)
def test_an_adapter_upload_has_its_own_body_cap(method: str, path: str, length: int, status: int) -> None:
    limits = {"max_prompt_audio_bytes": 1_000_000, "max_adapter_bytes": 4_000_000}
    assert edge_answer({}, "127.0.0.1", path, method, length, limits) == status
