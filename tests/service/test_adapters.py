"""LoRA adapters through the real stack: uploads checked against the model, used by id or name on every
route and through a saved voice, owned by tenants, bounded in size and number, declared in config.

The adapters are random synthetic ones of the served model's layout (non-zero ``lora_B``), so a request
with one speaks other audio than the base model; that each request's audio is exactly the reference
engine's for it is tests/model/test_adapters.py's job.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import safetensors.torch
import soundfile as sf
import torch
from websockets.sync.client import connect

from serve_app.model.adapters import Layout
from tests.conftest import Service, error_of, extra_app, run, save_voice
from tests.model.test_adapter_files import bytearray_pickle, deflated_bomb
from tests.model.test_adapters import random_adapter

ALICE, BOB, ADMIN_KEY = "alice-adapter-key", "bob-adapter-key", "admin-adapter-key"


@pytest.fixture(scope="module")
def layout(synthetic_engine: Callable[..., Any]) -> Layout:
    """The served model's LoRA parameters and shapes (the same synthetic preset, loaded in-process)."""
    return synthetic_engine("tiny-voxcpm1.5").runtime.adapters.expected


def weights(layout: Layout, seed: int) -> bytes:
    return safetensors.torch.save(random_adapter(layout, seed))


def upload(url: str, name: str, data: bytes, key: str | None = None, **fields: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    files = {"weights": ("lora_weights.safetensors", data)}
    return requests.post(f"{url}/api/adapters", data={"name": name, **fields}, files=files, headers=headers)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def speak(url: str, key: str | None = None, **form: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/api/tts", data={"text": "你好世界", "seed": 5, "max_len": 10, **form}, headers=headers)


def samples(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    audio, _ = sf.read(io.BytesIO(response.content), dtype="float32")
    return audio


def test_an_adapter_from_upload_to_speech_and_back(url: str, layout: Layout, reference_wav: Path) -> None:
    shape = requests.get(f"{url}/v1/models/voxcpm", timeout=30).json()["lora"]
    assert shape == {"r": 32, "alpha": 16.0, "enable_lm": True, "enable_dit": True, "enable_proj": False}
    name = unique("tuned")
    created = upload(url, name, weights(layout, 1), r=32, enable_dit="true")
    assert created.status_code == 201, created.text
    adapter = created.json()
    assert {k: adapter[k] for k in ("name", "model", "source", "owner")} == {
        "name": name,
        "model": "voxcpm",
        "source": "upload",
        "owner": None,  # anonymous loopback callers are the one admin tenant: theirs are shared
    }
    assert {k: adapter[k] for k in shape} == shape and adapter["bytes"] > 0
    listing = requests.get(f"{url}/api/adapters", timeout=30).json()
    assert adapter in listing["adapters"] and listing["models"]["voxcpm"] == shape
    assert requests.get(f"{url}/api/adapters/{adapter['adapter_id']}", timeout=30).json() == adapter

    base, by_name, by_id = (
        samples(speak(url)),
        samples(speak(url, adapter=name)),
        samples(speak(url, adapter=adapter["adapter_id"])),
    )
    assert not np.array_equal(base, by_name) and np.array_equal(by_name, by_id)
    streamed = requests.post(f"{url}/api/tts/stream", data={"text": "你好", "max_len": 6, "adapter": name})
    assert streamed.status_code == 200 and len(streamed.content) > 44

    # a saved voice carries it: a request naming the voice speaks with it, on the OpenAI route too
    voice = _voice_with(url, reference_wav, name)
    assert voice["adapter_id"] == adapter["adapter_id"]
    with_voice = samples(speak(url, voice_id=voice["voice_id"]))
    assert np.array_equal(with_voice, samples(speak(url, voice_id=voice["voice_id"], adapter=name)))
    plain = save_voice(url, reference_wav)
    assert not np.array_equal(with_voice, samples(speak(url, voice_id=plain["voice_id"])))
    speech = requests.post(f"{url}/v1/audio/speech", json={"model": "voxcpm", "input": "hi", "voice": voice["name"]})
    assert speech.status_code == 200 and speech.content

    # and the WebSocket's init
    ws_url = url.replace("http://", "ws://") + "/api/tts/ws"
    with connect(ws_url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "init", "adapter": name, "seed": 3}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "Hello there."}))
        ws.send(json.dumps({"type": "end"}))
        audio = b""
        while not isinstance(message := ws.recv(timeout=60), str) or json.loads(message)["type"] != "done":
            audio += message if isinstance(message, bytes) else b""
    assert audio
    with connect(ws_url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "init", "adapter": "no such adapter"}))
        error = json.loads(ws.recv(timeout=30))
    assert (error["type"], error["code"], error["field"]) == ("error", "not_found", "adapter")

    assert requests.delete(f"{url}/api/adapters/{adapter['adapter_id']}", timeout=30).status_code == 204
    assert requests.get(f"{url}/api/adapters/{adapter['adapter_id']}", timeout=30).status_code == 404
    gone = speak(url, adapter=name)
    assert gone.status_code == 404 and error_of(gone)["field"] == "adapter"
    orphaned = speak(url, voice_id=voice["voice_id"])
    assert orphaned.status_code == 400 and error_of(orphaned)["field"] == "voice"


def _voice_with(url: str, reference: Path, adapter: str) -> dict:
    with open(reference, "rb") as audio:
        response = requests.post(
            f"{url}/api/voices",
            data={"name": unique("tuned voice"), "text": "参考音频的文本", "adapter": adapter},
            files={"audio": audio},
        )
    assert response.status_code == 201, response.text
    return response.json()


def test_files_that_do_not_fit_the_model_are_refused_naming_what(url: str, layout: Layout, tmp_path: Path) -> None:
    good = random_adapter(layout, 2)
    first = sorted(good)[0]
    other_rank = {k: (v[:8] if k.endswith("lora_A") else v[:, :8]).contiguous() for k, v in good.items()}
    renamed = {**{k: v for k, v in good.items() if k != first}, first.replace("self_attn", "attention"): good[first]}
    for tensors in (other_rank, renamed):
        refused = upload(url, unique("bad"), safetensors.torch.save(tensors))
        assert refused.status_code == 400 and error_of(refused)["field"] == "weights", refused.text
    garbage = upload(url, unique("bad"), b"\x00" * 1000)
    assert garbage.status_code == 400 and error_of(garbage)["field"] == "weights"
    empty = upload(url, unique("bad"), b"")
    assert empty.status_code in (400, 422) and error_of(empty)["field"] == "weights"
    for field, value in (("r", 16), ("alpha", 8), ("enable_proj", "true")):
        refused = upload(url, unique("bad"), weights(layout, 3), **{field: value})
        assert refused.status_code == 400 and error_of(refused)["field"] == field
    blank = upload(url, "  ", weights(layout, 3))
    assert blank.status_code == 422 and error_of(blank)["field"] == "name"
    missing_model = upload(url, unique("bad"), weights(layout, 3), model="nope")
    assert missing_model.status_code == 404 and error_of(missing_model)["field"] == "model"
    # voxcpm's trainer may write a .ckpt: read weights-only, stored under a name of ours
    buffer = io.BytesIO()
    torch.save({"state_dict": good}, buffer)
    files = {"weights": ("../../etc/lora_weights.ckpt", buffer.getvalue())}
    created = requests.post(f"{url}/api/adapters", data={"name": unique("ckpt")}, files=files)
    assert created.status_code == 201, created.text
    assert samples(speak(url, adapter=created.json()["adapter_id"])).size
    assert requests.delete(f"{url}/api/adapters/{created.json()['adapter_id']}").status_code == 204


def test_crafted_bombs_are_refused_naming_weights_and_the_service_answers_on(
    url: str, layout: Layout, tmp_path: Path
) -> None:
    """A deflated pickle (256 MiB inflated) and a pickle calling bytearray(1 GiB): each took the model replica
    that much memory before its check bounded them (tests/model/test_adapter_files.py)."""
    for make in (deflated_bomb, bytearray_pickle):
        refused = upload(url, unique("bomb"), make(tmp_path / make.__name__, layout).read_bytes())
        assert refused.status_code == 400 and error_of(refused)["field"] == "weights", refused.text
    assert samples(speak(url)).size


@pytest.fixture(scope="module")
def tenants_url(
    service: Service, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory, layout: Layout
) -> Iterator[tuple[str, int]]:
    """An app with tenants, a quota of one adapter each, an upload cap just above one adapter, and one adapter
    declared in the model's config."""
    size = len(weights(layout, 0))
    declared = tmp_path_factory.mktemp("declared") / "lora_weights.safetensors"
    declared.write_bytes(weights(layout, 4))
    args = {
        "access": {"api_keys": [f"alice={ALICE}", BOB], "admin_keys": [ADMIN_KEY], "quotas": {"adapters": 1}},
        "limits": {"max_adapter_bytes": size + 1024},
        "adapters_dir": str(tmp_path_factory.mktemp("tenant-adapters")),
    }
    with extra_app(service, checkpoints, "adapters", args, adapters={"house": str(declared.parent)}) as app_url:
        yield app_url, size


def test_adapters_are_owned_bounded_and_declared(tenants_url: tuple[str, int], layout: Layout) -> None:
    url, size = tenants_url
    mine = upload(url, "mine", weights(layout, 5), ALICE)
    assert mine.status_code == 201 and mine.json()["owner"] == "alice"
    adapter_id = mine.json()["adapter_id"]
    # to another tenant it does not exist
    for method in ("GET", "DELETE"):
        theirs = requests.request(
            method, f"{url}/api/adapters/{adapter_id}", headers={"Authorization": f"Bearer {BOB}"}
        )
        assert theirs.status_code == 404
    for reference in (adapter_id, "mine"):
        used = speak(url, BOB, adapter=reference)
        assert used.status_code == 404 and error_of(used)["field"] == "adapter"
    assert speak(url, ALICE, adapter="mine").status_code == 200
    # the tenant's quota, then the upload cap (its own, not the reference-audio one)
    again = upload(url, "second", weights(layout, 6), ALICE)
    assert again.status_code == 403 and error_of(again)["field"] == "quotas.adapters"
    too_big = upload(url, "big", weights(layout, 6) + b"\x00" * 4096, BOB)
    assert too_big.status_code == 413 and error_of(too_big)["field"] in ("weights", "body")
    # an admin's are shared: everyone uses them, only admins delete them
    shared = upload(url, "shared", weights(layout, 7), ADMIN_KEY)
    assert shared.status_code == 201 and shared.json()["owner"] is None
    assert speak(url, BOB, adapter="shared").status_code == 200
    shared_id = shared.json()["adapter_id"]
    refused = requests.delete(f"{url}/api/adapters/{shared_id}", headers={"Authorization": f"Bearer {BOB}"})
    assert refused.status_code == 403
    # the declared one: listed for all, spoken with, never deleted through the API
    listing = requests.get(f"{url}/api/adapters", headers={"Authorization": f"Bearer {BOB}"}).json()["adapters"]
    house = next(a for a in listing if a["name"] == "house")
    assert house["source"] == "config" and house["owner"] is None and "mine" not in {a["name"] for a in listing}
    assert speak(url, BOB, adapter="house").status_code == 200
    kept = requests.delete(
        f"{url}/api/adapters/{house['adapter_id']}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert kept.status_code == 403
    assert size > 0


def test_the_command_line_uploads_lists_speaks_with_and_deletes_an_adapter(
    url: str, layout: Layout, tmp_path: Path
) -> None:
    path = tmp_path / "lora_weights.safetensors"
    path.write_bytes(weights(layout, 8))
    name = unique("cli")
    added = run(url, "adapters", "add", name, str(path))
    assert added.returncode == 0, added.stderr
    adapter_id = added.stdout.strip()
    listed = run(url, "adapters", "list")
    assert adapter_id in listed.stdout and "model voxcpm: r 32" in listed.stdout
    out = tmp_path / "tuned.wav"
    spoken = run(url, "say", "你好", "--adapter", name, "--max-len", "6", "--seed", "1", "-q", "-o", str(out))
    assert spoken.returncode == 0, spoken.stderr
    assert sf.info(out).frames > 0
    assert run(url, "adapters", "rm", adapter_id).returncode == 0
    refused = run(url, "say", "你好", "--adapter", name, "-q", "-o", str(out))
    assert refused.returncode == 4 and "adapter" in refused.stderr
