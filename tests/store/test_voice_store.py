"""The voice store on its own: tenants' voices and the shared ones, names and quotas, durability (fsync, crash
leftovers, a full disk), and two stores on one directory.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serve_app.config import TenantQuotas
from serve_app.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import STALE_STAGING_S, VoiceStore
from tests.conftest import (
    ADMIN,
    REPO,
)


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


ALICE = Principal("alice", False, "key:a")


BOBBY = Principal("bob", False, "key:b")


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


def test_a_recording_is_read_back_only_as_the_flac_the_store_wrote(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    voice = store.create(ALICE, "n", "t", np.zeros(1600, dtype=np.float32), 16000)
    sf.write(tmp_path / voice.voice_id / "audio.flac", np.zeros(1600), 16000, format="WAV")  # replaced by hand
    with pytest.raises(ValueError, match="not the FLAC"):
        store.audio(voice)


def test_room_is_checked_before_an_upload_and_again_at_commit(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path, TenantQuotas(voices=1, voice_bytes=None))
    store.check_room(ALICE)  # room for one
    store.create(ALICE, "one", "t", np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(QuotaExceeded):
        store.check_room(ALICE)
    store.check_room(ADMIN)  # admins keep the shared voices: never counted
