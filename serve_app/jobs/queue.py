"""Which job item the runner renders next: the runner's view of the unfinished jobs, in memory.

Tenants take turns: the next item goes to the tenant with an item ready that was served longest ago (a
tenant's 10,000 items do not hold back another's 10), and within a tenant its jobs go oldest first. A
model's items are started only while the model has a free background slot (``room``). A document whose
voice is its own first chunk's (it named none) renders that chunk first, then the rest after it (``anchored``);
one whose chunks continue each other renders them one at a time, in order (``in_order``).
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
    in_order: bool = False  # each item after the one before (a document whose chunks continue each other)
    in_flight: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)  # failed tries by item

    @classmethod
    def of(cls, job: Job, progress: Progress, needs_anchor: bool, anchored: bool, in_order: bool = False) -> QueuedJob:
        pending = deque(progress.pending(job.items_total))
        return cls(job, pending, needs_anchor, anchored or 0 in progress.failed, in_order)

    def ready(self) -> int | None:
        """The next item that may start now, if any."""
        if not self.pending or (self.in_order and self.in_flight):
            return None
        if self.needs_anchor and not self.anchored and self.pending[0] != 0:
            return None  # chunk 0 is in flight: the rest wait for the voice it sets
        return self.pending[0]

    def tried(self, index: int) -> int:
        """A failed try of the item counted: how many it has had."""
        self.attempts[index] = self.attempts.get(index, 0) + 1
        return self.attempts[index]

    def gave_up(self, index: int) -> None:
        """The item failed for good. A document's first chunk that would have set the voice of the rest: they go
        on without it (each chunk in the model's own voice), rather than waiting for ever."""
        if index == 0:
            self.anchored = True

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
