"""Tenants through the real stack: keys and the tenants they belong to, admins and shared voices, quotas,
failed authentications, per-key caps, the command line's key, and a deployment without keys serving loopback
clients only. Client addresses other than loopback come as from a reverse proxy on the same machine, with
X-Forwarded-For: the tenants' deployment trusts loopback as its proxy (``access.trusted_proxies``), and Serve's
proxy believes no forwarded header itself (FORWARDED_ALLOW_IPS is empty in the test session, as in the images).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from serve_app.config import API_KEYS_ENV
from tests.conftest import CLI, Service, error_of, extra_app, openai_error_of, run

ALICE_1, ALICE_2, BOB, CAROL, ADMIN_KEY = "alice-key-1", "alice-key-2", "bob-key-1", "carol-key-1", "admin-key-1"


DAVE = "dave-key-1"  # a tenant of its own for the quota


QUOTA = 3  # voices per tenant in the test deployment (alice keeps two: a duplicate name is a 409, not a 403)


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
        "trusted_proxies": ["127.0.0.1", "::1"],  # the reverse proxy on this machine
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
    # at its quota, the tenant's next upload is refused before it is read: not even decoded (no 415 for this)
    junk = requests.post(
        f"{tenants_url}/api/voices",
        data={"name": "junk", "text": "x"},
        files={"audio": ("a.wav", b"v=0\r\ns=-\r\n" * 4096)},
        headers=bearer(DAVE),
    )
    assert junk.status_code == 403 and error_of(junk)["field"] == "quotas.voices"


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
    deadline = time.monotonic() + 10  # freed when it closed: the server sees the close a moment after the client
    while True:
        try:
            with connect(ws_url, additional_headers=bearer(BOB), open_timeout=30):
                break
        except InvalidStatus as still:
            assert still.response.status_code == 429 and time.monotonic() < deadline
            time.sleep(0.1)


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
    """A request forwarded by a proxy on this machine (nginx's proxy_pass, a mesh sidecar) connects from loopback
    too: its forwarding headers make it remote, whatever address they name."""
    assert requests.get(f"{url}/api/voices", headers=remote("127.0.0.1")).status_code == 401
    assert requests.get(f"{url}/api/voices", headers={"Via": "1.1 sidecar"}).status_code == 401
    refused = requests.get(f"{url}/api/voices", headers=remote("203.0.113.9"))
    assert refused.status_code == 401
    error = error_of(refused)
    assert error["field"] == "authorization" and "allow_anonymous" in error["message"]
    assert API_KEYS_ENV in error["message"]
    assert requests.post(f"{url}/api/tts", data={"text": "你好"}, headers=remote("203.0.113.9")).status_code == 401
    # probes answer everyone; loopback clients are served as before
    assert requests.get(f"{url}/health", headers=remote("203.0.113.9")).status_code == 200
    assert requests.get(f"{url}/api/voices").status_code == 200


def test_a_tenants_lexicon_is_its_own(tenants_url: str) -> None:
    entries = json.dumps([{"grapheme": "W3C", "alias": "World Wide Web Consortium"}])
    saved = requests.post(
        f"{tenants_url}/api/lexicons", data={"name": "alices", "entries": entries}, headers=bearer(ALICE_1)
    )
    assert saved.status_code == 201, saved.text
    lexicon_id = saved.json()["lexicon_id"]
    assert requests.get(f"{tenants_url}/api/lexicons/{lexicon_id}", headers=bearer(ALICE_2)).status_code == 200
    theirs = requests.get(f"{tenants_url}/api/lexicons/{lexicon_id}", headers=bearer(BOB))
    assert theirs.status_code == 404 and error_of(theirs)["field"] == "lexicon_id"
    for name in (lexicon_id, "alices"):
        spoken = requests.post(
            f"{tenants_url}/api/tts", data={"text": "W3C", "lexicons": name, "max_len": 2}, headers=bearer(BOB)
        )
        assert spoken.status_code == 404 and error_of(spoken)["field"] == "lexicons"
    assert requests.delete(f"{tenants_url}/api/lexicons/{lexicon_id}", headers=bearer(BOB)).status_code == 404
