"""Usage per tenant and UTC day (requests, characters in, audio seconds out, job items), durable across restarts,
for ``GET /api/usage``.

Each writer (an ingress replica, the job runner) counts in memory and writes its own file,
``<root>/<day>/<writer>.json`` (its totals for that day, by tenant), every ``FLUSH_PERIOD_S`` and when it stops:
no two writers share a file, so there is no lock and no contention, and a reader sums every writer's file of
a day. A writer that is replaced starts a file of its own (its id is its replica's); what it counted since its
last write is lost if it is killed (at most one period), never counted twice. The file names are the
service's (a date, a replica id checked against its shape), never a client's; tenants are the configured ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from serve_app.store.durable import fsync_directory, new_id, write_durably

logger = logging.getLogger("ray.serve")

FLUSH_PERIOD_S = 5.0
AMOUNTS = ("requests", "characters", "audio_seconds", "job_items")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WRITER = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class UsageLedger:
    def __init__(self, root: str | Path, writer: str) -> None:
        if not _WRITER.match(writer):
            raise ValueError(f"not a writer id: {writer!r}")
        self.root = Path(root)
        self._writer = writer
        self._lock = threading.Lock()  # add() on the event loop, flush() in a thread
        self._days: dict[str, dict[str, dict[str, float]]] = {}  # day -> tenant -> amounts (this writer's totals)
        self._dirty: set[str] = set()

    def add(self, tenant: str, **amounts: float) -> None:
        """Counted for ``tenant`` today: any of ``AMOUNTS``."""
        day = today()
        with self._lock:
            totals = self._days.setdefault(day, defaultdict(lambda: dict.fromkeys(AMOUNTS, 0.0)))[tenant]
            for name, amount in amounts.items():
                totals[name] += amount
            self._dirty.add(day)

    def flush(self) -> None:
        """This writer's totals of every day changed since the last flush, written durably."""
        with self._lock:
            changed = {day: {t: dict(a) for t, a in self._days[day].items()} for day in self._dirty}
            self._dirty.clear()  # a failed write below marks them again
        for day, tenants in changed.items():
            try:
                directory = self.root / day
                directory.mkdir(parents=True, exist_ok=True)
                temporary = directory / f".{self._writer}.{new_id()}"
                write_durably(temporary, json.dumps(tenants).encode())
                os.replace(temporary, directory / f"{self._writer}.json")
                fsync_directory(directory)
            except OSError:
                with self._lock:
                    self._dirty.add(day)
                raise
        with self._lock:  # past days written and unchanged since: done with
            self._days = {day: t for day, t in self._days.items() if day >= today() or day in self._dirty}


async def keep_flushed(ledger: UsageLedger) -> None:
    """The ledger written every ``FLUSH_PERIOD_S`` while its replica runs (a task of the replica's loop)."""
    while True:
        await asyncio.sleep(FLUSH_PERIOD_S)
        try:
            await asyncio.to_thread(ledger.flush)
        except Exception:  # a full disk, or anything else: the counts are kept, and the task goes on
            logger.exception("usage: writing %s failed; the counts are kept and written next time", ledger.root)


def read(root: str | Path, tenant: str | None, days: int) -> list[dict[str, Any]]:
    """The last ``days`` UTC calendar days' usage (every writer's summed), one entry per day and tenant, newest first;
    ``tenant``: that tenant's only (None: every tenant's)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    first = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400))  # calendar days, today's included
    for day in sorted((p.name for p in root.iterdir() if _DAY.match(p.name) and p.name >= first), reverse=True):
        sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(AMOUNTS, 0.0))
        for path in (root / day).glob("*.json"):
            try:
                written = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a file being replaced: the next read has it
            for name, amounts in written.items():
                if tenant is None or name == tenant:
                    for amount in AMOUNTS:
                        sums[name][amount] += amounts.get(amount, 0.0)
        for name in sorted(sums):
            usage = sums[name]
            found.append(
                {
                    "day": day,
                    "tenant": name,
                    "requests": int(usage["requests"]),
                    "characters": int(usage["characters"]),
                    "audio_seconds": round(usage["audio_seconds"], 3),
                    "job_items": int(usage["job_items"]),
                }
            )
    return found
