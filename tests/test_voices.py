"""Saved voices: stored durably, listed, used by id or name on every endpoint, deleted; no path games."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from serve_app.errors import Conflict, NotFound
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import STALE_STAGING_S, VoiceStore
from tests.conftest import (
    ADMIN,
    REPO,
    TINY_V2_STEP_FRAMES,
    TINY_V15_STEP_FRAMES,
    V2_MODEL,
    Service,
    error_of,
    extra_app,
    openai_error_of,
    replica_status,
)


def save_voice(url: str, reference: Path, name: str | None = None, text: str = "参考音频的文本") -> dict:
    """A voice saved over HTTP; without a name, one no other voice has (a name is unique in its tenant)."""
    name = name or f"narrator {uuid.uuid4().hex[:8]}"
    with open(reference, "rb") as audio:
        response = requests.post(f"{url}/api/voices", data={"name": name, "text": text}, files={"audio": audio})
    assert response.status_code == 201, response.text
    return response.json()


def prompt_cache(url: str) -> tuple[int, int]:
    replica = replica_status(url)
    return replica["prompt_cache_hits"], replica["prompt_cache_misses"]


def test_voice_lifecycle(url: str, reference_wav: Path) -> None:
    voice = save_voice(url, reference_wav)
    assert set(voice) >= {"voice_id", "name", "text", "sample_rate", "seconds"}
    assert voice["sample_rate"] == 16000 and voice["seconds"] == pytest.approx(2.0)
    assert voice in requests.get(f"{url}/api/voices").json()["voices"]
    assert requests.get(f"{url}/api/voices/{voice['voice_id']}").json() == voice
    assert requests.delete(f"{url}/api/voices/{voice['voice_id']}").status_code == 204
    gone = requests.get(f"{url}/api/voices/{voice['voice_id']}")
    assert gone.status_code == 404 and error_of(gone)["field"] == "voice_id"


def test_a_saved_voice_is_encoded_once_per_replica(url: str, reference_wav: Path) -> None:
    # the cache is keyed by content: a transcript no other test uses makes this voice new to the replica
    voice = save_voice(url, reference_wav, name="once", text="只在这个测试里用的文本")
    hits, misses = prompt_cache(url)
    for _ in range(3):
        response = requests.post(
            f"{url}/api/tts/stream", data={"text": "保存的声音", "voice_id": voice["voice_id"], "max_len": 4}
        )
        assert response.status_code == 200
        assert len(response.content) == 44 + 4 * TINY_V15_STEP_FRAMES * 2
    assert prompt_cache(url) == (hits + 2, misses + 1)


def test_voice_on_every_endpoint_and_every_model(service: Service, reference_wav: Path) -> None:
    voice = save_voice(service.url, reference_wav, name="everywhere")
    by_name = requests.post(
        f"{service.url}/api/tts",
        data={"text": "名字", "voice_id": "everywhere", "max_len": 4, "retry_badcase": "false"},
    )
    assert by_name.status_code == 200
    for voice_field in (voice["voice_id"], "everywhere"):
        speech = requests.post(
            f"{service.url}/v1/audio/speech",
            json={"model": "tts-1", "voice": voice_field, "input": "你好", "response_format": "pcm", "max_len": 3},
        )
        assert speech.status_code == 200, speech.text
    v2 = requests.post(
        f"{service.multi_url}/api/tts/stream",
        data={"text": "共享", "voice_id": voice["voice_id"], "max_len": 3, "model": V2_MODEL},
    )
    assert v2.status_code == 200  # the store is shared by every deployment that names it
    assert len(v2.content) == 44 + 3 * TINY_V2_STEP_FRAMES * 2


@pytest.mark.parametrize("voice_id", ["../../etc/passwd", "..%2F..%2Fetc", "0" * 31, "a" * 33, "nonexistent"])
def test_unknown_or_malformed_ids_are_404_and_touch_no_path(url: str, voice_id: str) -> None:
    assert requests.get(f"{url}/api/voices/{voice_id}").status_code == 404
    response = requests.post(f"{url}/api/tts/stream", data={"text": "x", "voice_id": voice_id})
    assert response.status_code == 404
    assert error_of(response)["field"] == "voice_id"
    response = requests.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": voice_id, "input": "x"})
    assert response.status_code == 404
    assert openai_error_of(response)["field"] == "voice"


def test_refusals(url: str, reference_wav: Path) -> None:
    voice = save_voice(url, reference_wav, name="refusals")
    with open(reference_wav, "rb") as audio:
        both = requests.post(
            f"{url}/api/tts/stream",
            data={"text": "x", "voice_id": voice["voice_id"], "prompt_text": "y"},
            files={"prompt_audio": audio},
        )
    assert both.status_code == 422 and error_of(both)["field"] == "voice_id"
    not_audio = requests.post(
        f"{url}/api/voices", data={"name": "n", "text": "t"}, files={"audio": ("v.wav", b"not audio", "audio/wav")}
    )
    assert not_audio.status_code == 415 and error_of(not_audio)["field"] == "audio"
    with open(reference_wav, "rb") as audio:
        no_text = requests.post(f"{url}/api/voices", data={"name": "n"}, files={"audio": audio})
    assert no_text.status_code == 422 and error_of(no_text)["field"] == "text"
    no_audio = requests.post(f"{url}/api/voices", data={"name": "n", "text": "t"})
    assert no_audio.status_code == 422 and error_of(no_audio)["field"] == "audio"


def test_store_survives_a_restart_and_ignores_strays(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    voice = store.create(ADMIN, "n", "t", np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "not-a-voice").mkdir()
    (tmp_path / ("f" * 32)).mkdir()  # a voice-shaped directory without metadata
    reopened = VoiceStore(tmp_path)
    assert reopened.list(ADMIN) == [voice]
    samples, rate = reopened.audio(voice)
    assert rate == 16000 and len(samples) == 1600
    assert sf.info(tmp_path / voice.voice_id / "audio.flac").subtype == "PCM_24"


# --- durability and concurrency of the store ---------------------------------------------------------

SECOND = np.zeros(16000, dtype=np.float32)


def test_a_voice_is_synced_before_it_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file and the staging directory reach the disk before the rename that makes the voice visible,
    and the rename itself is synced (the parent directory) before create returns."""
    events: list[str] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(descriptor: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{descriptor}")).name)
        real_fsync(descriptor)

    def rename(self: Path, target: Path) -> Path:
        events.append("rename")
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    VoiceStore(tmp_path).create(ADMIN, "n", "t", SECOND, 16000, reference=(SECOND, 16000))
    staged = events[: events.index("rename")]
    assert {"fsync audio.flac", "fsync reference.flac", "fsync voice.json"} <= set(staged)
    assert staged[-1].startswith("fsync .incoming-")  # the staging directory, after its files
    assert events[events.index("rename") + 1] == f"fsync {tmp_path.name}"


def test_what_a_crash_left_is_cleaned_at_start(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    voice = store.create(ADMIN, "kept", "t", SECOND, 16000)
    stale, fresh, trash = tmp_path / ".incoming-stale", tmp_path / ".incoming-fresh", tmp_path / ".trash-x"
    for leftover in (stale, fresh, trash):
        leftover.mkdir()
        (leftover / "audio.flac").write_bytes(b"half")
    old = time.time() - STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    VoiceStore(tmp_path).recover()
    assert not stale.exists() and not trash.exists()
    assert fresh.exists()  # young: another replica may be writing it
    assert VoiceStore(tmp_path).list(ADMIN) == [voice]


def test_a_full_disk_is_a_507_that_leaves_nothing(tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk (writes fail with EFBIG; ENOSPC and EDQUOT alike)."""
    script = f"""
import json, resource, signal, numpy as np
from serve_app.errors import InsufficientStorage
from serve_app.store.tenants import Principal
from serve_app.errors import Conflict, NotFound
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import STALE_STAGING_S, VoiceStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
noise = np.random.default_rng(0).uniform(-1, 1, 48000).astype(np.float32)
try:
    VoiceStore({str(tmp_path)!r}).create(Principal("a", False, "k"), "big", "t", noise, 48000)
except InsufficientStorage as exc:
    print(json.dumps({{"status": exc.status, "code": exc.code}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(result.stdout) == {"status": 507, "code": "insufficient_storage"}, result.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == []


def test_concurrent_deletes_one_wins_the_others_find_nothing(tmp_path: Path) -> None:
    stores = [VoiceStore(tmp_path) for _ in range(2)]  # two replicas on one directory
    for _ in range(5):
        voice = stores[0].create(ADMIN, f"v{uuid.uuid4().hex}", "t", SECOND, 16000)
        barrier = threading.Barrier(6)

        def delete(store: VoiceStore, voice_id: str = voice.voice_id, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                store.delete(voice_id, ADMIN)
                return "deleted"
            except NotFound:
                return "not_found"

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(delete, stores * 3))
        assert sorted(outcomes) == ["deleted"] + ["not_found"] * 5
    assert stores[1].list(ADMIN) == [] and [p.name for p in tmp_path.iterdir()] == [".lock"]


def _create_names(root: str, names: list[str]) -> list[str]:
    """In another process: each name once, as a second replica would; which ones this process got."""
    store, got = VoiceStore(root), []
    for name in names:
        try:
            store.create(Principal("t", False, "k"), name, "t", SECOND, 16000)
            got.append(name)
        except Conflict:
            pass
    return got


def test_two_processes_on_one_directory_create_each_name_once(tmp_path: Path) -> None:
    names = [f"name {n}" for n in range(12)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = list(pool.map(_create_names, [str(tmp_path)] * 2, [names, names[::-1]]))
    assert sorted(got[0] + got[1]) == sorted(names)  # every name saved, none twice
    listed = VoiceStore(tmp_path).list(Principal("t", False, "k"))
    assert sorted(v.name for v in listed) == sorted(names)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 256 KiB file system of its own (tmpfs; root can mount one where the machine allows it)."""
    path = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_a_full_voice_store_answers_507_through_the_service(
    service: Service, checkpoints: Path, small_disk: Path, reference_wav: Path
) -> None:
    noise = io.BytesIO()
    sf.write(noise, np.random.default_rng(1).uniform(-0.5, 0.5, 48000 * 5), 48000, format="WAV")
    with extra_app(service, checkpoints, "fulldisk", {"voices_dir": str(small_disk)}) as url:
        full = requests.post(
            f"{url}/api/voices", data={"name": "too big", "text": "t"}, files={"audio": ("n.wav", noise.getvalue())}
        )
        assert full.status_code == 507, full.text
        assert error_of(full)["code"] == "insufficient_storage"
        assert [p.name for p in small_disk.iterdir() if p.name != ".lock"] == []  # nothing half-written
        saved = save_voice(url, reference_wav)  # what fits still saves
        assert [p.name for p in small_disk.iterdir() if p.name != ".lock"] == [saved["voice_id"]]
