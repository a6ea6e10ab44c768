"""Saved lexicons: durable, by id or name, a tenant's own invisible to others, quotas on count and bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import TenantQuotas
from serve_app.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from serve_app.store.lexicon_store import LexiconStore
from serve_app.store.tenants import Principal

ADMIN, ALICE, BOB = Principal("house", True, "a"), Principal("alice", False, "b"), Principal("bob", False, "c")
ENTRIES = [("W3C", "World Wide Web Consortium", True), ("重庆", "{chong2}{qing4}", True)]


def test_a_lexicon_is_kept_and_found_as_its_tenant_sees_it(tmp_path: Path) -> None:
    store = LexiconStore(tmp_path)
    mine = store.create(ALICE, "brands", ENTRIES, skipped=2, size=300)
    shared = store.create(ADMIN, "house", ENTRIES[:1], skipped=0, size=100)
    again = LexiconStore(tmp_path)  # another replica, or after a restart
    assert again.entries(again.get(mine.lexicon_id, ALICE)) == ENTRIES
    assert again.find("brands", "lexicons", ALICE) == mine and again.find("house", "lexicons", BOB) == shared
    assert [lexicon.name for lexicon in again.list(BOB)] == ["house"]
    for lookup in (lambda: again.get(mine.lexicon_id, BOB), lambda: again.find("brands", "lexicons", BOB)):
        with pytest.raises(NotFound):  # another tenant's is as absent
            lookup()
    with pytest.raises(Conflict):
        store.create(ALICE, "Brands", ENTRIES, skipped=0, size=1)
    with pytest.raises(Forbidden):
        store.delete(shared.lexicon_id, ALICE)
    store.delete(mine.lexicon_id, ALICE)
    with pytest.raises(NotFound):
        store.get(mine.lexicon_id, ALICE)


def test_quotas_on_count_and_bytes(tmp_path: Path) -> None:
    store = LexiconStore(tmp_path, TenantQuotas(lexicons=2, lexicon_bytes=1000))
    store.create(ALICE, "one", ENTRIES, skipped=0, size=600)
    with pytest.raises(QuotaExceeded) as too_big:
        store.create(ALICE, "two", ENTRIES, skipped=0, size=600)
    assert too_big.value.field == "quotas.lexicon_bytes"
    store.create(ALICE, "two", ENTRIES, skipped=0, size=100)
    with pytest.raises(QuotaExceeded) as too_many:
        store.check_room(ALICE)
    assert too_many.value.field == "quotas.lexicons"
    store.create(ADMIN, "admins are not counted", ENTRIES, skipped=0, size=5000)
