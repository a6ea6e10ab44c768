"""Which job item the runner renders next: the runner's view of the unfinished jobs, in memory.

Tenants take turns: the next item goes to the tenant with an item ready that was served longest ago (a
tenant's 10,000 items do not hold back another's 10), and within a tenant its jobs go oldest first. A
model's items are started only while the model has a free background slot (``room``). A document whose
voice is its own first chunk's (it named none) renders that chunk first, then the rest after it (``anchored``).
Nothing here waits or reads a file: the runner (``runner.py``) does the I/O and tells the queue what happened.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from serve_app.store.job_store import Job, Progress


@dataclass
class QueuedJob:
    job: Job
    pending: deque[int]  # items to render, in order
    needs_anchor: bool = False  # a document with no voice of its own: its chunk 0 sets the voice of the rest
    anchored: bool = False
    in_flight: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)  # failed tries by item

    @classmethod
    def of(cls, job: Job, progress: Progress, needs_anchor: bool, anchored: bool) -> QueuedJob:
        return cls(job, deque(progress.pending(job.items_total)), needs_anchor, anchored or 0 in progress.failed)

    def ready(self) -> int | None:
        """The next item that may start now, if any."""
        if not self.pending:
            return None
        if self.needs_anchor and not self.anchored and self.pending[0] != 0:
            return None  # chunk 0 is in flight: the rest wait for the voice it sets
        return self.pending[0]

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight


class JobQueue:
    def __init__(self) -> None:
        self.jobs: dict[str, QueuedJob] = {}
        self._turn = itertools.count()
        self._served: dict[str, int] = {}  # tenant -> the turn it was last served on

    def add(self, queued: QueuedJob) -> None:
        self.jobs.setdefault(queued.job.job_id, queued)

    def drop(self, job_id: str) -> QueuedJob | None:
        return self.jobs.pop(job_id, None)

    def next(self, room: Callable[[str], bool]) -> tuple[QueuedJob, int] | None:
        """The item to start now (taken out of pending, put in flight), of the tenant whose turn it is, among
        jobs whose model has ``room``; None when nothing can start."""
        ready: dict[str, QueuedJob] = {}  # per tenant, its oldest job with an item ready
        for queued in sorted(self.jobs.values(), key=lambda q: q.job.created):
            if queued.job.owner not in ready and queued.ready() is not None and room(queued.job.model):
                ready[queued.job.owner] = queued
        if not ready:
            return None
        tenant = min(ready, key=lambda t: self._served.get(t, -1))
        self._served[tenant] = next(self._turn)
        queued = ready[tenant]
        index = queued.pending.popleft()
        queued.in_flight.add(index)
        return queued, index

    def in_flight(self, model: str) -> int:
        return sum(len(q.in_flight) for q in self.jobs.values() if q.job.model == model)

    def known(self) -> Iterable[str]:
        return list(self.jobs)
