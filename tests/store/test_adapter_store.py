"""The adapter store on its own: tenants' adapters, the shared and the declared ones, names and quotas, ids
that touch no path, and a store kept inside the voices' directory (as the container and cluster configs do)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from serve_app.config import AppConfig, TenantQuotas
from serve_app.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from serve_app.store.adapter_store import Adapter, AdapterStore, declared, declared_id, new_adapter
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import VoiceStore
from tests.conftest import ADMIN

ALICE = Principal(tenant="alice", admin=False, key_id="a")
BOB = Principal(tenant="bob", admin=False, key_id="b")
SHAPE = {"r": 32, "alpha": 16.0, "enable_lm": True, "enable_dit": True, "enable_proj": False}


def upload(store: AdapterStore, caller: Principal, name: str, size: int = 10) -> Adapter:
    with store.records.staging("weights") as staging:
        (staging / "weights.safetensors").write_bytes(b"x" * size)
        adapter = new_adapter(name, "voxcpm", SHAPE, "weights.safetensors", "digest", size)
        return store.commit(staging, adapter, caller)


def test_a_tenants_adapters_are_its_own_and_admins_share(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    mine = upload(store, ALICE, "mine")
    assert mine.owner == "alice" and store.weights_path(mine) == tmp_path / mine.adapter_id / "weights.safetensors"
    assert store.find("mine", "adapter", ALICE) == mine == store.find(mine.adapter_id, "adapter", ALICE)
    for reference in ("mine", mine.adapter_id):
        with pytest.raises(NotFound):
            store.find(reference, "adapter", BOB)
    with pytest.raises(NotFound):
        store.get(mine.adapter_id, BOB)
    with pytest.raises(NotFound):
        store.delete(mine.adapter_id, BOB)
    shared = upload(store, ADMIN, "house")
    assert shared.owner is None and store.find("house", "adapter", BOB) == shared
    with pytest.raises(Forbidden):
        store.delete(shared.adapter_id, BOB)
    assert [a.name for a in store.list(BOB)] == ["house"] and len(store.list(ADMIN)) == 2
    store.delete(mine.adapter_id, ALICE)
    with pytest.raises(NotFound):
        store.get(mine.adapter_id, ALICE)
    assert not (tmp_path / mine.adapter_id).exists()


def test_names_and_quotas(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, TenantQuotas(adapters=2, adapter_bytes=25))
    upload(store, ALICE, "one")
    with pytest.raises(Conflict) as clash:
        upload(store, ALICE, "ONE")
    assert clash.value.field == "name"
    upload(store, BOB, "one")  # another tenant, its own names
    upload(store, ALICE, "two")
    with pytest.raises(QuotaExceeded) as count:
        upload(store, ALICE, "three")
    assert count.value.field == "quotas.adapters"
    with pytest.raises(QuotaExceeded) as size:
        upload(store, BOB, "big", size=20)
    assert size.value.field == "quotas.adapter_bytes"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".incoming-")] == []


def test_declared_adapters_are_shared_listed_and_kept(tmp_path: Path) -> None:
    config = AppConfig.model_validate({"model": {"name": "voxcpm", "adapters": {"house": str(tmp_path / "h")}}})
    (house,) = declared(config)
    assert house.adapter_id == declared_id("voxcpm", "house") and house.source == "config"
    store = AdapterStore(tmp_path / "store", declared=[house])
    assert store.find("house", "adapter", BOB) == house and store.list(BOB) == [house]
    assert store.weights_path(house) == tmp_path / "h"
    with pytest.raises(Forbidden):
        store.delete(house.adapter_id, ADMIN)
    with pytest.raises(Conflict):
        upload(store, ADMIN, "house")  # the shared names include the declared ones
    config = AppConfig.model_validate({"model": {"lora": None, "adapters": {"x": "/x"}}})
    assert declared(config) == []  # a model without adapters declares none


@pytest.mark.parametrize("adapter_id", ["../etc", "0" * 31, "A" * 32, "x" * 32])
def test_ids_of_other_shapes_touch_no_path(tmp_path: Path, adapter_id: str) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(NotFound):
        store.get(adapter_id, ADMIN)
    with pytest.raises(NotFound):
        store.delete(adapter_id, ADMIN)


def test_a_record_naming_a_file_of_its_own_choice_is_not_read(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    adapter = upload(store, ADMIN, "edited")
    meta = tmp_path / adapter.adapter_id / "adapter.json"
    meta.write_text(meta.read_text().replace("weights.safetensors", "../../secret"))
    with pytest.raises(NotFound):
        store.get(adapter.adapter_id, ADMIN)


def test_the_adapters_directory_inside_the_voices_is_no_voice(tmp_path: Path) -> None:
    voices = VoiceStore(tmp_path)
    adapters = AdapterStore(tmp_path / ".adapters")
    upload(adapters, ADMIN, "tuned")
    voice = voices.create(ADMIN, "v", "t", np.zeros(160, dtype=np.float32), 16000, adapter_id=uuid.uuid4().hex)
    voices.recover()
    assert voices.list(ADMIN) == [voice] and len(adapters.list(ADMIN)) == 1
