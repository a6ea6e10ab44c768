"""The usage ledger: each writer's own file, summed by readers per day and tenant; a failed write kept for later."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.store import usage_store
from serve_app.store.usage_store import UsageLedger


def test_writers_are_summed_per_day_and_tenant(tmp_path: Path) -> None:
    ingress, runner = UsageLedger(tmp_path, "ingress-a"), UsageLedger(tmp_path, "jobs-b")
    ingress.add("alice", requests=1, characters=10, audio_seconds=1.5)
    ingress.add("alice", requests=1, characters=5, audio_seconds=0.5)
    ingress.add("bob", requests=1, characters=1, audio_seconds=0.25)
    runner.add("alice", job_items=1, characters=7, audio_seconds=2.0)
    ingress.flush()
    runner.flush()
    ingress.flush()  # nothing new: nothing counted twice
    assert sorted(p.name for p in (tmp_path / usage_store.today()).iterdir()) == ["ingress-a.json", "jobs-b.json"]
    everyone = usage_store.read(tmp_path, None, days=30)
    assert [(day["tenant"], day["requests"], day["characters"], day["job_items"]) for day in everyone] == [
        ("alice", 2, 22, 1),
        ("bob", 1, 1, 0),
    ]
    assert everyone[0]["audio_seconds"] == 4.0
    assert [day["tenant"] for day in usage_store.read(tmp_path, "bob", days=1)] == ["bob"]
    (tmp_path / "not-a-day").mkdir()
    assert usage_store.read(tmp_path / "absent", None, days=1) == [] and len(usage_store.read(tmp_path, None, 1)) == 2


def test_a_failed_write_is_written_next_time(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    ledger = UsageLedger(blocked, "ingress-a")  # its root is a file: the write fails
    ledger.add("alice", requests=1)
    with pytest.raises(OSError):
        ledger.flush()
    ledger.root = tmp_path / "usage"
    ledger.flush()
    assert usage_store.read(tmp_path / "usage", None, 1)[0]["requests"] == 1


def test_writer_ids_are_checked_before_they_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        UsageLedger(tmp_path, "../x")


def test_a_day_that_failed_to_write_is_written_after_midnight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = UsageLedger(tmp_path / "usage", "ingress-a")
    monkeypatch.setattr(usage_store, "today", lambda: "2026-12-06")
    ledger.add("alice", requests=1)
    root, ledger.root = ledger.root, tmp_path / "a-file"
    ledger.root.write_text("")
    with pytest.raises(OSError):
        ledger.flush()
    monkeypatch.setattr(usage_store, "today", lambda: "2026-12-07")
    ledger.add("alice", requests=2)
    ledger.root = root
    ledger.flush()  # yesterday's counts were kept, and are written now beside today's
    written = {day.name: day for day in root.iterdir()}
    assert sorted(written) == ["2026-12-06", "2026-12-07"]


def test_days_are_calendar_days(tmp_path: Path) -> None:
    (tmp_path / "2000-01-01").mkdir()
    (tmp_path / "2000-01-01" / "ingress-a.json").write_text('{"alice": {"requests": 1}}')
    assert usage_store.read(tmp_path, None, days=1) == []  # an old day is not "the last day"
    assert usage_store.read(tmp_path, None, days=366) == []
