"""The job store: accepted durably, tenant-owned, idempotent submissions, progress from results alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serve_app.errors import NotFound
from serve_app.store.job_store import JobStore, application_root
from serve_app.store.tenants import Principal

ALICE, BOB = Principal("alice", False, "a"), Principal("bob", False, "b")
ADMIN = Principal("ops", True, "o")
SPEC = {"items": [{"text": "一。"}, {"text": "二。"}, {"text": "三。"}]}


def test_a_job_is_its_owner_s_and_its_progress_is_its_results(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job, new = store.create(ALICE, "items", SPEC, 3, None)
    assert new and store.get(job.job_id, ALICE) == job and store.get(job.job_id, ADMIN) == job
    with pytest.raises(NotFound):
        store.get(job.job_id, BOB)
    with pytest.raises(NotFound):
        store.get("../" + job.job_id, ALICE)
    assert store.list(BOB) == [] and store.list(ALICE) == [job]
    assert store.spec(job) == SPEC
    assert store.progress(job).status(3) == "queued"
    store.started(job)
    assert store.progress(job).status(3) == "running"
    path = store.item_done(job, 1, b"RIFF", "wav", {"seconds": 1.5})
    store.item_failed(job, 0, "bad_request", "text has nothing to speak")
    assert path.read_bytes() == b"RIFF" and store.item_audio(job, store.progress(job).done[1]) == path
    again = JobStore(tmp_path).progress(job)  # another replica, or after a restart: the same
    assert again.done == {1: {"seconds": 1.5, "file": "1.wav", "bytes": 4}} and again.failed[0]["code"] == "bad_request"
    assert again.failed[0]["id"] is None
    assert again.pending(3) == [2]
    store.item_done(job, 2, b"RIFF", "wav", {"seconds": 0.5})
    assert store.progress(job).status(3) == "failed"  # finished, one item failed


def test_one_key_one_job_even_when_submitted_together(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.create(ALICE, "items", SPEC, 3, "retry-1"), range(4)))
    assert len({job.job_id for job, _ in results}) == 1 and sum(new for _, new in results) == 1
    other, new = store.create(BOB, "items", SPEC, 3, "retry-1")  # another tenant's key is its own
    assert new and other.job_id != results[0][0].job_id


def test_cancelled_deleted_and_expired_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job, _ = store.create(ALICE, "document", {"document": "x"}, 2, None)
    store.cancel(job)
    assert store.progress(job).status(2) == "cancelled"
    assert store.expired(retention_s=3600) == [] and store.expired(3600, now=job.created + 3601) == [job]
    assert store.delete(job) and not store.delete(job)
    with pytest.raises(NotFound):
        store.get(job.job_id, ALICE)


def test_one_runner_holds_the_lease(tmp_path: Path) -> None:
    first, second = JobStore(tmp_path), JobStore(tmp_path)
    assert first.runner_lease() is not None and first.runner_lease() is first.runner_lease()
    assert second.runner_lease() is None  # until the first's process ends


def test_each_application_has_a_directory_of_its_own(tmp_path: Path) -> None:
    assert application_root(tmp_path, "voxcpm") == tmp_path / "voxcpm"
    assert application_root(tmp_path, "../etc") == tmp_path / "_etc"
    assert application_root(tmp_path, "..") == tmp_path / "_"
