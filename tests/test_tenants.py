"""Tenants: keys and the tenants they belong to, admins and shared voices, quotas, failed authentications,
per-key caps, and a deployment without keys serving loopback clients only; through the real stack, and
the voice store's rules on their own.

Client addresses other than loopback come through Serve's proxy as they would from a reverse proxy on the
same machine: its uvicorn takes ``X-Forwarded-For`` from loopback connections (and only from those).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from starlette.types import Message, Receive, Scope, Send
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AccessConfig, AppConfig, TenantQuotas
from serve_app.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from serve_app.ingress.auth import Keyring, parse_key
from serve_app.ingress.edge import build_chain, is_loopback
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import VoiceStore
from tests.conftest import ADMIN, Service, error_of, extra_app, openai_error_of
from tests.test_cli import CLI, run

ALICE_1, ALICE_2, BOB, CAROL, ADMIN_KEY = "alice-key-1", "alice-key-2", "bob-key-1", "carol-key-1", "admin-key-1"
DAVE = "dave-key-1"  # a tenant of its own for the quota
QUOTA = 2  # voices per tenant in the test deployment
SHARED = "house narrator"  # the shared voice `alloy` is mapped to


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def remote(address: str) -> dict[str, str]:
    """A client at ``address``, as Serve's proxy sees one behind a reverse proxy on the same machine."""
    return {"X-Forwarded-For": address}


@pytest.fixture(scope="module")
def tenants_url(service: Service, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    access = {
        "api_keys": [f"alice={ALICE_1}", f"alice={ALICE_2}", BOB, f"carol={CAROL}", DAVE],  # bob: a bare key
        "admin_keys": [f"ops={ADMIN_KEY}"],
        "failed_auth_rate_limit": "5/minute",
        "max_requests_per_key": 1,
        "max_sockets_per_key": 1,
        "quotas": {"voices": QUOTA},
    }
    voices = str(tmp_path_factory.mktemp("tenant-voices"))
    args = {"access": access, "openai": {"voices": {"alloy": SHARED}}, "voices_dir": voices}
    with extra_app(service, checkpoints, "tenants", args) as url:
        yield url


def save(url: str, key: str, name: str, wav: Path) -> requests.Response:
    with open(wav, "rb") as audio:
        return requests.post(
            f"{url}/api/voices",
            data={"name": name, "text": "参考音频的文本"},
            files={"audio": audio},
            headers=bearer(key),
        )


def names(url: str, key: str) -> set[str]:
    return {v["name"] for v in requests.get(f"{url}/api/voices", headers=bearer(key)).json()["voices"]}


def speak(url: str, key: str, voice: str | None = None) -> requests.Response:
    form = {"text": "你好", "max_len": 2, **({"voice_id": voice} if voice else {})}
    return requests.post(f"{url}/api/tts", data=form, headers=bearer(key))


def test_a_tenants_voices_are_its_own(tenants_url: str, reference_wav: Path) -> None:
    created = save(tenants_url, ALICE_1, "mine", reference_wav)
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["owner"] == "alice"
    # another key of the tenant (a rotated key) sees and uses it, by id and by name
    assert "mine" in names(tenants_url, ALICE_2)
    assert speak(tenants_url, ALICE_2, "mine").status_code == 200
    # to another tenant it does not exist: the same answer as an id nobody has
    assert "mine" not in names(tenants_url, BOB)
    absent = uuid.uuid4().hex
    for method in ("GET", "DELETE"):
        theirs = requests.request(method, f"{tenants_url}/api/voices/{voice['voice_id']}", headers=bearer(BOB))
        nobodys = requests.request(method, f"{tenants_url}/api/voices/{absent}", headers=bearer(BOB))
        assert theirs.status_code == nobodys.status_code == 404
        assert error_of(theirs)["message"] == error_of(nobodys)["message"].replace(absent, voice["voice_id"])
    for reference in (voice["voice_id"], "mine"):
        used = speak(tenants_url, BOB, reference)
        assert used.status_code == 404 and error_of(used)["field"] == "voice_id"
        speech = requests.post(
            f"{tenants_url}/v1/audio/speech",
            json={"model": "tts-1", "input": "hi", "voice": reference},
            headers=bearer(BOB),
        )
        assert speech.status_code == 404 and openai_error_of(speech)["field"] == "voice"
    # over the WebSocket too
    ws_url = tenants_url.replace("http://", "ws://") + "/api/tts/ws"
    with connect(ws_url, additional_headers=bearer(BOB), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "init", "voice_id": voice["voice_id"]}))
        error = json.loads(ws.recv(timeout=30))
    assert (error["type"], error["code"], error["field"]) == ("error", "not_found", "voice_id")
    assert requests.get(f"{tenants_url}/api/voices/{voice['voice_id']}", headers=bearer(ALICE_1)).status_code == 200


def test_a_name_is_unique_within_a_tenant(tenants_url: str, reference_wav: Path) -> None:
    assert save(tenants_url, ALICE_1, "twice", reference_wav).status_code == 201
    again = save(tenants_url, ALICE_2, "Twice", reference_wav)  # names compare in any case
    assert again.status_code == 409
    assert error_of(again)["code"] == "conflict" and error_of(again)["field"] == "name"
    # another tenant has its own names
    assert save(tenants_url, BOB, "twice", reference_wav).status_code == 201


def test_shared_voices_are_made_by_admins_and_used_by_all(tenants_url: str, reference_wav: Path) -> None:
    shared = save(tenants_url, ADMIN_KEY, SHARED, reference_wav)
    assert shared.status_code == 201 and shared.json()["owner"] is None
    voice_id = shared.json()["voice_id"]
    for key in (ALICE_1, BOB):
        assert SHARED in names(tenants_url, key)
        assert speak(tenants_url, key, voice_id).status_code == 200
        refused = requests.delete(f"{tenants_url}/api/voices/{voice_id}", headers=bearer(key))
        assert refused.status_code == 403 and error_of(refused)["code"] == "forbidden"
    # a tenant's voice of the same name changes nothing of what `alloy` speaks with: the map names shared voices
    assert save(tenants_url, CAROL, SHARED, reference_wav).status_code == 201
    listing = requests.get(f"{tenants_url}/v1/audio/voices", headers=bearer(CAROL)).json()["voices"]
    assert next(v for v in listing if v["id"] == "alloy")["voice_id"] == voice_id
    # admins see every tenant's voices
    everyone = requests.get(f"{tenants_url}/api/voices", headers=bearer(ADMIN_KEY)).json()["voices"]
    assert {"alice", "carol", None} <= {v["owner"] for v in everyone}
    assert requests.delete(f"{tenants_url}/api/voices/{voice_id}", headers=bearer(ADMIN_KEY)).status_code == 204
    gone = requests.post(
        f"{tenants_url}/v1/audio/speech",
        json={"model": "tts-1", "input": "hi", "voice": "alloy"},
        headers=bearer(CAROL),
    )
    assert gone.status_code == 404 and "shared voice" in openai_error_of(gone)["message"]


def test_a_tenant_keeps_at_most_its_quota(tenants_url: str, reference_wav: Path) -> None:
    kept = [save(tenants_url, DAVE, f"quota {n}", reference_wav) for n in range(QUOTA + 1)]
    assert [answer.status_code for answer in kept] == [201] * QUOTA + [403]
    assert error_of(kept[-1])["code"] == "quota_exceeded" and error_of(kept[-1])["field"] == "quotas.voices"
    assert names(tenants_url, DAVE) - {SHARED} == {f"quota {n}" for n in range(QUOTA)}


def test_wrong_keys_are_limited_per_address_and_valid_keys_are_not(tenants_url: str) -> None:
    flood = remote("198.51.100.7")
    answers = [requests.get(f"{tenants_url}/api/voices", headers={**flood, **bearer("guess")}) for _ in range(7)]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 2
    assert error_of(answers[-1])["code"] == "rate_limited" and int(answers[-1].headers["retry-after"]) >= 1
    # the same address with a valid key, and another address guessing, are not slowed by it
    assert requests.get(f"{tenants_url}/api/voices", headers={**flood, **bearer(BOB)}).status_code == 200
    other = requests.get(f"{tenants_url}/api/voices", headers={**remote("198.51.100.8"), **bearer("guess")})
    assert other.status_code == 401


def test_per_key_cap_on_sockets(tenants_url: str) -> None:
    """A socket holds its slot as long as it is open, so the cap is seen end to end (a stream's slot is held
    until its last byte: in-process below, as the tiny model finishes any stream within moments)."""
    ws_url = tenants_url.replace("http://", "ws://") + "/api/tts/ws"
    with connect(ws_url, additional_headers=bearer(BOB), open_timeout=30):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, additional_headers=bearer(BOB), open_timeout=30)
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["retry-after"]) >= 1
        with connect(ws_url, additional_headers=bearer(CAROL), open_timeout=30):  # another key's own allowance
            pass
        assert speak(tenants_url, BOB).status_code == 200  # sockets and requests are capped apart
    with connect(ws_url, additional_headers=bearer(BOB), open_timeout=30):  # freed when it closed
        pass


def test_the_command_line_sends_its_key(tenants_url: str, reference_wav: Path, tmp_path: Path) -> None:
    refused = run(tenants_url, "voices", "list")
    assert refused.returncode == 4 and "HTTP 401" in refused.stderr
    added = run(tenants_url, "--api-key", CAROL, "voices", "add", "cli", str(reference_wav), "--text", "参考")
    assert added.returncode == 0, added.stderr
    said = subprocess.run(
        [CLI, "--url", tenants_url, "say", "你好", "--voice", "cli", "--max-len", "2", "-o", str(tmp_path / "a.wav")],
        env={**os.environ, "VOXCPM_SERVE_API_KEY": CAROL},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert said.returncode == 0, said.stderr


def test_without_keys_only_loopback_clients_are_served(url: str) -> None:
    refused = requests.get(f"{url}/api/voices", headers=remote("203.0.113.9"))
    assert refused.status_code == 401
    error = error_of(refused)
    assert error["field"] == "authorization" and "allow_anonymous" in error["message"]
    assert API_KEYS_ENV in error["message"]
    assert requests.post(f"{url}/api/tts", data={"text": "你好"}, headers=remote("203.0.113.9")).status_code == 401
    # probes answer everyone; loopback clients are served as before
    assert requests.get(f"{url}/health", headers=remote("203.0.113.9")).status_code == 200
    assert requests.get(f"{url}/api/voices").status_code == 200


# --- the edge and the keys, in-process -------------------------------------------------------------


def test_key_forms() -> None:
    assert parse_key("alice=s3cret", admin=False)[1].tenant == "alice"
    key, caller = parse_key("c2VjcmV0IGtleQ==", admin=False)  # base64 padding is part of a bare key
    assert key == b"c2VjcmV0IGtleQ==" and caller.tenant.startswith("key-")
    assert parse_key("k", admin=True)[1].admin
    assert "s3cret" not in parse_key("alice=s3cret", admin=False)[1].key_id


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, " a=one , two ,")
    monkeypatch.setenv(ADMIN_KEYS_ENV, "ops=three")
    keyring = Keyring(AccessConfig())
    assert keyring.principal("one") == Principal("a", False, parse_key("a=one", False)[1].key_id)
    assert keyring.principal("two") is not None and keyring.principal("three").admin  # type: ignore[union-attr]
    assert keyring.principal("one ") is None and keyring.principal("") is None
    assert not Keyring(AccessConfig()).allow_anonymous
    monkeypatch.setenv(ALLOW_ANONYMOUS_ENV, "true")
    assert Keyring(AccessConfig()).allow_anonymous


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


def edge_answer(access: dict, client: str, path: str = "/api/voices") -> int:
    """The status the edge gives a GET from ``client`` (an app behind it answers 200)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = AppConfig.model_validate({"access": access})
    chain = build_chain(app, config, Keyring(config.access), lambda: False)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": (client, 5000)}
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


# --- the store's rules, in-process -----------------------------------------------------------------

ALICE = Principal("alice", False, "key:a")
BOBBY = Principal("bob", False, "key:b")
SECOND = np.zeros(16000, dtype=np.float32)


def test_store_scopes_voices_by_tenant(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path, TenantQuotas(voices=2, voice_bytes=None))
    mine = store.create(ALICE, "mine", "t", SECOND, 16000)
    shared = store.create(ADMIN, "house", "t", SECOND, 16000)
    assert mine.owner == "alice" and shared.owner is None
    assert [v.name for v in store.list(BOBBY)] == ["house"]
    assert {v.name for v in store.list(ALICE)} == {"mine", "house"}
    with pytest.raises(NotFound):
        store.get(mine.voice_id, BOBBY)
    with pytest.raises(NotFound):
        store.find("mine", "voice_id", BOBBY)
    with pytest.raises(NotFound):
        store.delete(mine.voice_id, BOBBY)
    with pytest.raises(Forbidden):
        store.delete(shared.voice_id, ALICE)
    with pytest.raises(Conflict):
        store.create(ALICE, "MINE", "t", SECOND, 16000)
    # a tenant's own voice of a shared voice's name is its own by name; the configured map never sees it
    own_house = store.create(ALICE, "house", "t", SECOND, 16000)
    assert store.find("house", "voice", ALICE) == own_house
    assert store.find_shared("house", "voice") == shared
    with pytest.raises(NotFound):
        store.find_shared(own_house.voice_id, "voice")
    with pytest.raises(QuotaExceeded) as quota:
        store.create(ALICE, "third", "t", SECOND, 16000)
    assert quota.value.field == "quotas.voices"
    store.create(ADMIN, "admins have no quota", "t", SECOND, 16000)


def test_voices_saved_before_tenants_are_shared(tmp_path: Path) -> None:
    voice = VoiceStore(tmp_path).create(ADMIN, "old", "t", SECOND, 16000)
    meta = tmp_path / voice.voice_id / "voice.json"
    written = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in written.items() if k not in ("owner", "bytes")}))
    assert [v.name for v in VoiceStore(tmp_path).list(ALICE)] == ["old"]


def test_byte_quota(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path, TenantQuotas(voices=None, voice_bytes=20_000))
    store.create(ALICE, "small", "t", np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(QuotaExceeded) as quota:
        store.create(ALICE, "noise", "t", np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32), 16000)
    assert quota.value.field == "quotas.voice_bytes"
    assert [v.name for v in store.list(ALICE)] == ["small"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incoming-")]
