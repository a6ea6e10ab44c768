"""Which requests generate now: a queue of waiting requests in front of a bounded batch of running ones.

Requests are admitted in arrival order while a KV slot is free (``max_batch_size`` slots) and leave
between steps (finished, cancelled, failed). Running requests occupy slots 0..n-1 in ``running``'s
order; when one leaves, the last takes its slot, and ``retire`` says which slot moved where so the
caller can carry its KV and VAE state along. Knows nothing about VoxCPM.
"""

from __future__ import annotations

from collections import deque

from serve_app.model.batched.sequence import Sequence, Status


class Scheduler:
    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def admit(self) -> list[Sequence]:
        """Waiting requests moved into free slots, oldest first."""
        admitted = []
        while self.waiting and len(self.running) < self.max_batch_size:
            sequence = self.waiting.popleft()
            sequence.slot, sequence.status = len(self.running), Status.RUNNING
            self.running.append(sequence)
            admitted.append(sequence)
        return admitted

    def retire(self, sequence: Sequence) -> tuple[int, int] | None:
        """Take a request out (waiting or running); (from slot, to slot) if another request moved to fill the gap."""
        status, sequence.status = sequence.status, Status.FINISHED
        if status is Status.WAITING:
            self.waiting.remove(sequence)
            return None
        if status is Status.FINISHED:
            return None
        freed, last = sequence.slot, self.running.pop()
        sequence.slot = -1
        if last is sequence:
            return None
        moved_from, last.slot = last.slot, freed
        self.running[freed] = last
        return moved_from, freed
