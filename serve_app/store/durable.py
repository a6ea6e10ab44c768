"""Records kept on a directory several replicas (or nodes, on shared storage) write at once: what the voice
and adapter stores share.

A record is a directory ``<root>/<id>/``, ``id`` a random 32-hex string checked against that shape before
it touches a path (no client string ever becomes a file name). It is written into a staging directory,
every file and the directory fsynced, then renamed into place and the parent fsynced, so after a crash a
record is either whole or absent; a delete renames it away first (one of several concurrent deletes wins,
the others find nothing) and removes it after. What must be decided against every record (a name once per
tenant, quotas) is decided under an exclusive ``flock`` on ``<root>/.lock`` (which NFSv4 and most shared
file systems honour). A full disk or quota is a 507 that leaves nothing behind; staging and trash a crash
left are removed when a store is recovered (ingress start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from serve_app.errors import InsufficientStorage

logger = logging.getLogger("ray.serve")

RECORD_ID = re.compile(r"^[0-9a-f]{32}$")
_LOCK = ".lock"
STAGING_PREFIX, TRASH_PREFIX = ".incoming-", ".trash-"
# Staging younger than this may be another replica's create in progress; older is a crash's leftover.
STALE_STAGING_S = 3600.0
# A write failing with these means the storage is full (EFBIG: a file-size limit): 507, not 500.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def new_id() -> str:
    return uuid.uuid4().hex


class Dated(Protocol):
    created: float


Record = TypeVar("Record", bound=Dated)


class DurableDirectory:
    """One store's directory of records (``what``: how its errors name a record, e.g. "voice")."""

    def __init__(self, root: str | Path, what: str) -> None:
        self.root = Path(root)
        self.what = what

    def recover(self) -> None:
        """Remove what crashed creates (staging older than ``STALE_STAGING_S``) and deletes (trash) left."""
        if not self.root.is_dir():
            return
        oldest_live = time.time() - STALE_STAGING_S
        for path in self.root.iterdir():
            stale = path.name.startswith(STAGING_PREFIX) and _mtime(path) < oldest_live
            if stale or path.name.startswith(TRASH_PREFIX):
                action = "create" if path.name.startswith(STAGING_PREFIX) else "delete"
                logger.warning("%s store: removing %s, left by an interrupted %s", self.what, path.name, action)
                shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self, field: str) -> Iterator[Path]:
        """A fresh staging directory for one record's files, removed unless ``commit`` took it; a full disk
        while writing or committing is a 507 naming ``field``."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            yield staging
        except OSError as exc:
            if exc.errno in _FULL:
                raise InsufficientStorage(
                    f"the {self.what} store is full; nothing was saved (the operator must free space)", field
                ) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, record_id: str, admit: Callable[[], None]) -> None:
        """The staged record made durable and renamed into place, if ``admit`` (run under the store's lock,
        against every record) does not refuse it."""
        fsync_directory(staging)
        with self._locked():
            admit()
            staging.rename(self.root / record_id)
        fsync_directory(self.root)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [path.name for path in self.root.iterdir() if RECORD_ID.match(path.name)]

    def path(self, record_id: str) -> Path:
        if not RECORD_ID.match(record_id):
            raise ValueError(f"not a record id: {record_id!r}")
        return self.root / record_id

    def read(self, record_id: str, meta: str, kind: type[Record]) -> Record | None:
        """A record as ``kind`` (a dataclass) from its JSON file ``meta``, dropping fields ``kind`` does not
        have (a newer version's); None when it cannot be read (half deleted, not a record id, damaged)."""
        try:
            data: dict[str, Any] = json.loads((self.path(record_id) / meta).read_text())
            known = {field.name for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
            return kind(**{key: value for key, value in data.items() if key in known})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def read_all(self, meta: str, kind: type[Record]) -> list[Record]:
        """Every record that can be read, oldest first."""
        records = [self.read(record_id, meta, kind) for record_id in self.ids()]
        return sorted((record for record in records if record is not None), key=lambda record: record.created)

    def discard(self, record_id: str) -> bool:
        """Renamed away, then removed: gone for every reader at once. False when a concurrent delete took it."""
        trash = self.root / f"{TRASH_PREFIX}{new_id()}"
        try:
            self.path(record_id).rename(trash)
        except FileNotFoundError:
            return False
        fsync_directory(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            yield


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: the directory itself must be synced)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
