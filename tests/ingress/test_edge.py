"""The edge in-process: this machine's clients, anonymous access asked for, per-key caps held until an answer
ends, quotas and form parts checked before a body is read."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AppConfig
from serve_app.errors import QuotaExceeded
from serve_app.ingress.auth import Keyring
from serve_app.ingress.edge import build_chain
from serve_app.store.tenants import Principal


def edge_answer(
    access: dict,
    client: str,
    path: str = "/api/voices",
    method: str = "GET",
    length: int = 0,
    limits: dict | None = None,
    headers: dict[str, str] | None = None,
    rooms: dict | None = None,
) -> int:
    """The status the edge gives a request from ``client`` whose body says it is ``length`` bytes (an app behind
    it answers 200; the body is never read)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = AppConfig.model_validate({"access": access, "limits": limits or {}})
    chain = build_chain(app, config, Keyring(config.access), lambda: False, rooms)
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the edge read the body")

    async def send(message: Message) -> None:
        sent.append(message)

    raw = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    raw += [(b"content-length", str(length).encode())] if length else []
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "client": (client, 5000)}
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
        other_route = await post("one", "/api/voices")  # the cap covers every route
        other_key = asyncio.create_task(post("two"))
        await asyncio.sleep(0.01)
        release.set()
        return [await held, refused, other_route, await other_key, await post("one")]

    assert asyncio.run(scenario()) == [200, 429, 429, 200, 200]


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


@pytest.mark.parametrize(
    ("client", "headers", "status"),
    [
        ("127.0.0.1", {}, 200),
        ("::1", {}, 200),
        ("127.0.0.6", {}, 401),  # an Istio sidecar forwarding someone else
        ("127.8.9.10", {}, 401),
        ("::ffff:127.0.0.1", {}, 401),
        ("10.1.2.3", {}, 401),
        ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}, 401),  # nginx on the same host, proxy_pass
        ("127.0.0.1", {"x-forwarded-proto": "https"}, 401),
        ("127.0.0.1", {"forwarded": "for=203.0.113.9"}, 401),
        ("127.0.0.1", {"x-real-ip": "203.0.113.9"}, 401),
        ("127.0.0.1", {"via": "1.1 proxy"}, 401),
    ],
)
def test_only_this_machine_itself_is_served_without_keys(
    client: str, headers: dict[str, str], status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in (API_KEYS_ENV, ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV):
        monkeypatch.delenv(env, raising=False)
    assert edge_answer({}, client, headers=headers) == status


def test_failed_keys_are_counted_per_client_behind_a_trusted_proxy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    access = {"api_keys": ["good"], "failed_auth_rate_limit": "2/minute", "trusted_proxies": ["10.0.0.0/8"]}
    config = AppConfig.model_validate({"access": access})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a wrong key reached the app")

    chain = build_chain(app, config, Keyring(config.access), lambda: False)

    def status(peer: str, forwarded_for: str) -> int:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        headers = [(b"authorization", b"Bearer wrong"), (b"x-forwarded-for", forwarded_for.encode())]
        scope = {"type": "http", "method": "GET", "path": "/api/voices", "headers": headers, "client": (peer, 1)}
        asyncio.run(chain(scope, None, send))  # type: ignore[arg-type]
        return sent[0]["status"]

    # behind the trusted proxy, the client it names is counted: two guesses each, then 429
    assert [status("10.0.0.5", "198.51.100.1") for _ in range(3)] == [401, 401, 429]
    assert status("10.0.0.5", "198.51.100.2") == 401
    # an untrusted peer's X-Forwarded-For is its own claim: counted as the peer, whatever it names
    assert [status("203.0.113.7", f"198.51.100.{n}") for n in range(3, 6)] == [401, 401, 429]


def test_a_tenant_at_its_quota_is_refused_before_its_upload_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    checked: list[tuple[Principal, int]] = []

    def full(caller: Principal, length: int) -> None:
        checked.append((caller, length))
        raise QuotaExceeded("a tenant keeps at most 1 voices", "quotas.voices")

    access = {"api_keys": ["acme=k1"]}
    headers = {"authorization": "Bearer k1"}
    rooms = {"/api/voices": full}
    assert edge_answer(access, "10.0.0.1", "/api/voices", "POST", 1_000_000, None, headers, rooms) == 403
    assert [(caller.tenant, length) for caller, length in checked] == [("acme", 1_000_000)]
    assert edge_answer(access, "10.0.0.1", "/api/voices", "GET", 0, None, headers, rooms) == 200  # listing is free
