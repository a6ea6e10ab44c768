"""Which requests generate now: a queue of waiting requests in front of a bounded batch of running ones.

Requests are admitted in arrival order while a KV slot is free (``max_batch_size`` slots) and leave
between steps (finished, cancelled, failed). Running requests occupy slots 0..n-1 in ``running``'s
order; when one leaves, the last takes its slot, and ``retire`` says which slot moved where so the
caller can carry its KV and VAE state along. Knows nothing about VoxCPM.
"""

from __future__ import annotations

from collections import deque

from serve_app.model.batched.sequence import Sequence, Status

# Newcomers go first (``first_step_alone``) while the batch has room and time to spare: at most this share of
# its slots held (past it their extra steps take the capacity newcomers are about to queue for: on the tiny
# CPU model at 90 % of capacity they tipped it into queueing), and its steps taking at most this share of a
# patch's audio (so a newcomer's second chunk still comes before its first one has played).
NEWCOMERS_FIRST_OCCUPANCY = 0.75
NEWCOMERS_FIRST_STEP_SHARE = 0.5


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

    def newcomers_first(self, fresh: list[Sequence], step_s: float, patch_s: float) -> int | None:
        """The first slot of ``fresh`` (requests that just joined and run) when they take their first step on
        their own, before the batch's; None where the batch's next step is theirs instead: the batch has no room
        or time to spare (``NEWCOMERS_FIRST_*``; requests waiting for a slot), none of them streams (nobody hears
        a first patch before its sentence ends), they are more than half as many as the streams running (their
        own step would cost about the batch's), or a cancellation meanwhile moved one out of the end."""
        first = len(self.running) - len(fresh)
        spare = first <= NEWCOMERS_FIRST_OCCUPANCY * self.max_batch_size and not self.waiting
        spare = spare and step_s <= NEWCOMERS_FIRST_STEP_SHARE * patch_s
        few = 0 < 2 * len(fresh) <= first
        at_end = sorted(sequence.slot for sequence in fresh) == list(range(first, len(self.running)))
        return first if spare and few and at_end and any(sequence.streaming for sequence in fresh) else None
