"""Jobs as they are kept: what was asked (written once, durably, when the job is accepted) and what is done so
far (each item's result written durably the moment it is rendered), so that a runner that dies, or the whole
service, resumes every unfinished job from its results: an item is done exactly when its result is there.

A job is a record of the durable directory (``durable.py``): ``job.json`` (its id, owner, kind, size, creation
time, idempotency key) and ``spec.json`` (what to render, as the ingress resolved it: kept out of listings,
which read ``job.json`` only). Beside them, written later: ``items/<index>.json`` (a finished item's facts)
after ``items/<index>.<format>`` (its audio), ``items/<index>.failed.json`` (why it failed), ``started`` and
``cancelled`` markers, and a document's prompts: its anchor (``anchor.flac`` and ``anchor.json``: the
recording its later chunks are spoken after) and, with ``jobs.continuation``, its tail (``tail.flac`` and
``tail.json``: the last chunk's end, which the next one continues). File names are the service's (an index,
a fixed format name), never a client's.
Each file is written to a temporary name, fsynced and renamed, so a crash leaves it whole or absent.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import soundfile as sf

from serve_app.errors import NotFound
from serve_app.store.durable import RECORD_ID, DurableDirectory, fsync_directory, new_id, write_durably
from serve_app.store.tenants import Principal

_META, _SPEC, _ITEMS, _STARTED, _CANCELLED = "job.json", "spec.json", "items", "started", "cancelled"
PromptRole = Literal["anchor", "tail"]  # a document's voice for every chunk; the end the next chunk continues
_LEASE = ".runner"
_ITEM = re.compile(r"^(?P<index>\d+)\.(?P<kind>json|failed\.json)$")


@dataclass(frozen=True)
class Job:
    job_id: str
    owner: str  # the tenant that submitted it (an admin's own tenant too): another tenant's job is a 404
    kind: str  # "items" or "document"
    items_total: int
    created: float
    idempotency_key: str | None = None
    model: str = ""
    chars: int = 0  # the text's characters, as sent: what the tenant's job_chars quota counts
    admin: bool = False  # submitted by an admin: the job may use what an admin may (shared voices' owners)
    audio_format: str = "wav"  # every file's (a document's chunks are kept as FLAC, served in this format)
    sample_rate: int = 0  # every file's

    def principal(self) -> Principal:
        """Who the job acts as when it resolves its voices and adapters: its submitter's tenant."""
        return Principal(self.owner, self.admin, key_id=f"job-{self.job_id}")


@dataclass(frozen=True)
class StoredPrompt:
    """A recording a document's chunks are spoken after, cut from one of its chunks."""

    samples: np.ndarray
    sample_rate: int
    text: str | None
    chunk: int  # the chunk it was cut from


@dataclass
class Progress:
    """What is done of a job: finished items' facts by index, failed items' errors, and its markers."""

    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, dict[str, str]] = field(default_factory=dict)
    started: bool = False
    cancelled: bool = False

    def status(self, total: int) -> str:
        if self.cancelled:
            return "cancelled"
        if len(self.done) + len(self.failed) >= total:
            return "failed" if self.failed else "succeeded"
        return "running" if self.started or self.done or self.failed else "queued"

    def pending(self, total: int) -> list[int]:
        """The items still to render, in order."""
        return [index for index in range(total) if index not in self.done and index not in self.failed]


def application_root(jobs_dir: str | Path, application: str) -> Path:
    """Where one Serve application's jobs live, under the configured ``jobs_dir``: applications that share the
    directory (several apps of one cluster, with one config's stores) each render only their own jobs, on their
    own models, each with its own runner lease. The name is the operator's, made safe for a path all the same."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", application).lstrip(".") or "_"
    return Path(jobs_dir) / safe


class JobStore:
    def __init__(self, root: str | Path) -> None:
        self.records = DurableDirectory(root, "job")
        self.root = self.records.root
        self._lease: BinaryIO | None = None

    def recover(self) -> None:
        self.records.recover()

    def create(
        self,
        caller: Principal,
        kind: str,
        spec: dict[str, Any],
        items_total: int,
        idempotency_key: str | None,
        model: str = "",
        chars: int = 0,
        check_quota: Callable[[list[Job]], None] | None = None,
        output: tuple[str, int] = ("wav", 0),
    ) -> tuple[Job, bool]:
        """The job, accepted durably; or, for a key the caller's tenant already submitted a job with, that job.
        Whether it is new. ``check_quota`` (given the tenant's jobs, under the store's lock, so that two
        submissions together cannot both pass) refuses a job past the tenant's quotas. ``output``: every file's
        format and rate, kept in ``job.json`` for the routes that serve them."""
        job = Job(new_id(), caller.tenant, kind, items_total, time.time(), idempotency_key, model, chars, caller.admin)
        job = dataclasses.replace(job, audio_format=output[0], sample_rate=output[1])
        existing: list[Job] = []

        def admit() -> None:  # under the store's lock: two submissions with one key make one job
            ours = [j for j in self._all() if j.owner == job.owner]
            if idempotency_key is not None:
                existing.extend(j for j in ours if j.idempotency_key == idempotency_key)
            if existing:
                raise _Duplicate
            if check_quota is not None:
                check_quota(ours)

        with self.records.staging("items") as staging:
            write_durably(staging / _SPEC, json.dumps(spec, ensure_ascii=False).encode())
            write_durably(staging / _META, json.dumps(dataclasses.asdict(job)).encode())
            (staging / _ITEMS).mkdir()
            try:
                self.records.commit(staging, job.job_id, admit)
            except _Duplicate:
                return existing[0], False
        return job, True

    def get(self, job_id: str, caller: Principal) -> Job:
        job = self.records.read(job_id, _META, Job) if RECORD_ID.match(job_id) else None
        if job is None or not (caller.admin or job.owner == caller.tenant):
            raise NotFound(f"no job {job_id!r}", "job_id")
        return job

    def list(self, caller: Principal) -> list[Job]:
        """The caller's jobs, oldest first (an admin: every tenant's)."""
        return [job for job in self._all() if caller.admin or job.owner == caller.tenant]

    def all(self) -> list[Job]:
        """Every job, oldest first, from their ``job.json`` alone (no progress read)."""
        return self._all()

    def is_cancelled(self, job: Job) -> bool:
        return (self.records.path(job.job_id) / _CANCELLED).exists()

    def spec(self, job: Job) -> dict[str, Any]:
        return json.loads((self.records.path(job.job_id) / _SPEC).read_text())

    def progress(self, job: Job) -> Progress:
        path = self.records.path(job.job_id)
        progress = Progress(started=(path / _STARTED).exists(), cancelled=(path / _CANCELLED).exists())
        for entry in (path / _ITEMS).iterdir() if (path / _ITEMS).is_dir() else ():
            if (match := _ITEM.match(entry.name)) is None:
                continue
            facts = json.loads(entry.read_text())
            target = progress.failed if match["kind"] == "failed.json" else progress.done
            target[int(match["index"])] = facts
        return progress

    def save_prompt(
        self, job: Job, role: PromptRole, samples: np.ndarray, rate: int, text: str | None, chunk: int
    ) -> None:
        """A recording cut from chunk ``chunk`` that later chunks are spoken after, kept with the job so that the
        voice (and, continued, the prosody) holds across restarts."""
        path = self.records.path(job.job_id)
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_24")
        self._write(path, f"{role}.flac", buffer.getvalue())
        facts = {"text": text, "sample_rate": rate, "chunk": chunk}
        self._write(path, f"{role}.json", json.dumps(facts, ensure_ascii=False).encode())

    def prompt(self, job: Job, role: PromptRole) -> StoredPrompt | None:
        """The stored recording of that role; None until a chunk made one."""
        path = self.records.path(job.job_id)
        if not (path / f"{role}.json").exists():
            return None
        facts = json.loads((path / f"{role}.json").read_text())
        samples, rate = sf.read(path / f"{role}.flac", dtype="float32")
        return StoredPrompt(samples, rate, facts["text"], facts.get("chunk", 0))

    def started(self, job: Job) -> None:
        self._write(self.records.path(job.job_id), _STARTED, b"")

    def item_done(self, job: Job, index: int, audio: bytes, audio_format: str, facts: dict[str, Any]) -> Path:
        """An item's audio, then its facts (the mark that it is done): its audio file."""
        items = self.records.path(job.job_id) / _ITEMS
        name = f"{index}.{audio_format}"
        self._write(items, name, audio)
        facts = {**facts, "file": name, "bytes": len(audio)}
        self._write(items, f"{index}.json", json.dumps(facts, ensure_ascii=False).encode())
        return items / name

    def item_failed(self, job: Job, index: int, code: str, message: str, item_id: str | None = None) -> None:
        """Why an item failed, with the client's id for it (so that a status names it without the spec)."""
        items = self.records.path(job.job_id) / _ITEMS
        failure = {"code": code, "message": message, "id": item_id}
        self._write(items, f"{index}.failed.json", json.dumps(failure, ensure_ascii=False).encode())

    def item_audio(self, job: Job, facts: dict[str, Any]) -> Path:
        """A finished item's audio file, from its facts (``Progress.done``)."""
        return self.records.path(job.job_id) / _ITEMS / facts["file"]

    def runner_lease(self) -> BinaryIO | None:
        """The job runner's lease: an exclusive ``flock`` on ``.runner`` in the store, held while this process
        lives (so a replica starting while another stops waits for it); None while another process holds it."""
        if self._lease is None:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / _LEASE, "ab")  # held open for the process's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
            self._lease = handle
        return self._lease

    def cancel(self, job: Job) -> None:
        self._write(self.records.path(job.job_id), _CANCELLED, b"")

    def delete(self, job: Job) -> bool:
        return self.records.discard(job.job_id)

    def expired(self, retention_s: float, now: float | None = None) -> list[Job]:
        """Jobs created longer than ``retention_s`` ago: their results and text are due for removal."""
        cutoff = (time.time() if now is None else now) - retention_s
        return [job for job in self._all() if job.created < cutoff]

    def _all(self) -> list[Job]:
        return self.records.read_all(_META, Job)

    @staticmethod
    def _write(directory: Path, name: str, data: bytes) -> None:
        temporary = directory / f".{name}.{new_id()}"
        write_durably(temporary, data)
        os.replace(temporary, directory / name)
        fsync_directory(directory)


class _Duplicate(Exception):
    """A submission whose idempotency key names a job already there."""
