"""Saved voices: a reference recording and its transcript, stored once, used by id, owned by a tenant.

A voice is a directory ``<root>/<id>/`` holding ``audio.flac`` (mono, the upload's own rate,
24-bit), optionally ``reference.flac`` (an isolated reference recording for VoxCPM2, used beside the
first as a continuation prompt) and ``voice.json``. A designed voice's ``audio.flac`` is a sample
the service generated from a description, which it keeps with it (see ``Voice.description``).

Ownership: a voice belongs to the tenant that saved it (``owner``), and only that tenant sees, uses
and deletes it; to anyone else it does not exist. Voices saved by admins, and every voice saved before
tenants existed, are shared (``owner`` null): usable by all, changed by admins only.

Durability and concurrency, for several replicas (or nodes, on shared storage) on one directory: a
voice is written into a staging directory, every file and the directory fsynced, then renamed into
place and the parent fsynced, so after a crash a voice is either whole or absent; a delete renames the
voice away first (one of several concurrent deletes wins, the others find nothing) and removes it
after. Name uniqueness and quotas are decided under an exclusive ``flock`` on ``<root>/.lock`` (which
NFSv4 and most shared file systems honour). A full disk or quota is a 507 that leaves nothing behind;
staging and trash a crash left are removed when a store is recovered (ingress start).

Ids are random 32-hex strings and every id is checked against that shape before it touches a path:
no client string ever becomes a file name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from serve_app.config import TenantQuotas
from serve_app.errors import Conflict, Forbidden, InsufficientStorage, NotFound, QuotaExceeded
from serve_app.store.tenants import Principal

logger = logging.getLogger("ray.serve")

_VOICE_ID = re.compile(r"^[0-9a-f]{32}$")
_AUDIO = "audio.flac"
_REFERENCE = "reference.flac"
_META = "voice.json"
_LOCK = ".lock"
STAGING_PREFIX, TRASH_PREFIX = ".incoming-", ".trash-"
# Staging younger than this may be another replica's create in progress; older is a crash's leftover.
STALE_STAGING_S = 3600.0
# A write failing with these means the storage is full (EFBIG: a file-size limit): 507, not 500.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class Voice:
    voice_id: str
    name: str
    text: str
    sample_rate: int
    seconds: float
    digest: str  # of the recordings and transcript: a replica's prompt cache key
    created: float
    kind: str = "recording"  # "recording": uploaded; "designed": a sample generated from ``description``
    # VoxCPM2: the description a designed voice was made with; requests naming the voice without
    # instructions of their own get it, with the sample as an isolated reference, so it stays one speaker.
    description: str | None = None
    reference_seconds: float | None = None  # of reference.flac, when the voice has one
    owner: str | None = None  # the tenant that saved it; None: shared (an admin's, or saved before tenants)
    bytes: int = 0  # its recordings on disk, counted against its owner's quota

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "digest"}

    def visible_to(self, caller: Principal) -> bool:
        return caller.admin or self.owner is None or self.owner == caller.tenant


_FIELDS = frozenset(field.name for field in dataclasses.fields(Voice))


class VoiceStore:
    def __init__(self, root: str | Path, quotas: TenantQuotas | None = None) -> None:
        self.root = Path(root)
        self._quotas = quotas or TenantQuotas(voices=None, voice_bytes=None)

    def recover(self) -> None:
        """Remove what crashed creates (staging older than ``STALE_STAGING_S``) and deletes (trash) left."""
        if not self.root.is_dir():
            return
        oldest_live = time.time() - STALE_STAGING_S
        for path in self.root.iterdir():
            stale = path.name.startswith(STAGING_PREFIX) and _mtime(path) < oldest_live
            if stale or path.name.startswith(TRASH_PREFIX):
                logger.warning("voice store: removing %s, left by an interrupted %s", path.name, _action(path.name))
                shutil.rmtree(path, ignore_errors=True)

    def create(
        self,
        caller: Principal,
        name: str,
        text: str,
        samples: np.ndarray,
        sample_rate: int,
        reference: tuple[np.ndarray, int] | None = None,
        description: str | None = None,
    ) -> Voice:
        """A voice from a recording and its transcript, with an isolated reference beside it, or (with
        ``description``) from a sample generated from that description; owned by the caller's tenant, or
        shared when an admin saves it."""
        self.root.mkdir(parents=True, exist_ok=True)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        digest = hashlib.sha256(samples.tobytes() + f"|{sample_rate}|{text}".encode())
        if reference is not None:
            reference = (np.ascontiguousarray(reference[0], dtype=np.float32), reference[1])
            digest.update(f"|reference|{reference[1]}|".encode() + reference[0].tobytes())
        voice = Voice(
            voice_id=uuid.uuid4().hex,
            name=name,
            text=text,
            sample_rate=sample_rate,
            seconds=len(samples) / sample_rate,
            digest=digest.hexdigest(),
            created=time.time(),
            kind="recording" if description is None else "designed",
            description=description,
            reference_seconds=None if reference is None else len(reference[0]) / reference[1],
            owner=None if caller.admin else caller.tenant,
        )
        staging: Path | None = None
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
            size = _write_flac(staging / _AUDIO, samples, sample_rate)
            if reference is not None:
                size += _write_flac(staging / _REFERENCE, *reference)
            voice = dataclasses.replace(voice, bytes=size)
            _write_durably(staging / _META, json.dumps(asdict(voice), ensure_ascii=False).encode())
            _fsync_directory(staging)
            with self._locked():
                self._admit(voice, caller)
                staging.rename(self.root / voice.voice_id)
            _fsync_directory(self.root)
        except OSError as exc:
            _remove(staging)
            if exc.errno in _FULL:
                raise InsufficientStorage(
                    "the voice store is full; nothing was saved (the operator must free space)", "audio"
                ) from None
            raise
        except BaseException:
            _remove(staging)
            raise
        return voice

    def list(self, caller: Principal) -> list[Voice]:
        """The voices the caller may use, oldest first: its own and the shared ones (an admin: all)."""
        return [voice for voice in self._all() if voice.visible_to(caller)]

    def get(self, voice_id: str, caller: Principal, field: str = "voice_id") -> Voice:
        voice = self._read(voice_id) if _VOICE_ID.match(voice_id) else None
        if voice is None or not voice.visible_to(caller):
            raise NotFound(f"no saved voice {voice_id!r}", field)
        return voice

    def find(self, id_or_name: str, field: str, caller: Principal) -> Voice:
        """By id, else by name: among the caller's own voices first, then the shared ones (the most recent of
        a name; in any case when none matches exactly)."""
        if _VOICE_ID.match(id_or_name) and (voice := self._read(id_or_name)) is not None:
            if voice.visible_to(caller):
                return voice
        voices = self._all()
        own = [v for v in voices if v.owner == (None if caller.admin else caller.tenant)]
        return _named(id_or_name, field, own, [v for v in voices if v.owner is None])

    def find_shared(self, id_or_name: str, field: str) -> Voice:
        """A shared voice by id or name: what the deployment's configuration may point at (never a tenant's
        voice, so that no tenant can change what a configured name speaks with)."""
        shared = [voice for voice in self._all() if voice.owner is None]
        by_id = [voice for voice in shared if voice.voice_id == id_or_name]
        return by_id[0] if by_id else _named(id_or_name, field, shared)

    def audio(self, voice: Voice, reference: bool = False) -> tuple[np.ndarray, int]:
        """The voice's recording, or with ``reference`` its isolated reference recording."""
        samples, rate = sf.read(self.root / voice.voice_id / (_REFERENCE if reference else _AUDIO), dtype="float32")
        return samples, rate

    def delete(self, voice_id: str, caller: Principal) -> None:
        """Renamed away, then removed: a voice is gone for every reader at once, and of several concurrent
        deletes exactly one finds it. Admins may also delete a voice whose description cannot be read."""
        voice = self._read(voice_id) if _VOICE_ID.match(voice_id) else None
        unreadable = voice is None and caller.admin and _VOICE_ID.match(voice_id) and (self.root / voice_id).is_dir()
        if not unreadable and (voice is None or not voice.visible_to(caller)):
            raise NotFound(f"no saved voice {voice_id!r}", "voice_id")
        if voice is not None and voice.owner is None and not caller.admin:
            raise Forbidden("this voice is shared: only an admin key may delete it", "voice_id")
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            (self.root / voice_id).rename(trash)
        except FileNotFoundError:  # a concurrent delete took it first
            raise NotFound(f"no saved voice {voice_id!r}", "voice_id") from None
        _fsync_directory(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def _admit(self, voice: Voice, caller: Principal) -> None:
        """Under the lock: a name once per tenant (once among the shared voices), and the tenant's quotas."""
        voices = [v for v in self._all() if v.owner == voice.owner]
        if any(v.name.casefold() == voice.name.casefold() for v in voices):
            raise Conflict(f"a voice named {voice.name!r} exists already; delete it or choose another name", "name")
        if caller.admin:
            return
        count, used = len(voices), sum(v.bytes for v in voices)
        if self._quotas.voices is not None and count + 1 > self._quotas.voices:
            raise QuotaExceeded(f"a tenant keeps at most {self._quotas.voices} voices", "quotas.voices")
        if self._quotas.voice_bytes is not None and used + voice.bytes > self._quotas.voice_bytes:
            raise QuotaExceeded(
                f"this voice ({voice.bytes} bytes) would take the tenant past its {self._quotas.voice_bytes} bytes "
                f"of saved recordings ({used} used)",
                "quotas.voice_bytes",
            )

    def _all(self) -> list[Voice]:
        if not self.root.is_dir():
            return []
        voices = [self._read(path.name) for path in self.root.iterdir() if _VOICE_ID.match(path.name)]
        return sorted((v for v in voices if v is not None), key=lambda v: v.created)

    def _read(self, voice_id: str) -> Voice | None:
        try:
            data: dict[str, Any] = json.loads((self.root / voice_id / _META).read_text())
            return Voice(**{key: value for key, value in data.items() if key in _FIELDS})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            yield


def _named(id_or_name: str, field: str, *groups: list[Voice]) -> Voice:
    """The most recent voice of the first group holding that name (exactly, else in any case)."""
    for group in groups:
        named = [v for v in group if v.name == id_or_name] or [
            v for v in group if v.name.casefold() == id_or_name.casefold()
        ]
        if named:
            return named[-1]
    raise NotFound(f"no saved voice {id_or_name!r}", field)


def _write_flac(path: Path, samples: np.ndarray, rate: int) -> int:
    """Encoded in memory, then written: a full disk then fails the write with its own OSError (libsndfile
    writing to a file reports a short write as an assertion)."""
    encoded = io.BytesIO()
    sf.write(encoded, samples, rate, format="FLAC", subtype="PCM_24")
    _write_durably(path, encoded.getvalue())
    return len(encoded.getvalue())


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: the directory itself must be synced)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _action(name: str) -> str:
    return "create" if name.startswith(STAGING_PREFIX) else "delete"
