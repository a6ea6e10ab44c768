"""Which requests generate now, and how: the batched engine's admission policy, all of it.

A queue of waiting requests in front of a bounded batch of running ones. Requests are admitted while a KV
slot is free (``max_batch_size`` slots): live (interactive) ones in arrival order, then background ones (a
job's) in theirs, while no live request waits, within their share of the slots and, while live requests run,
within a step-time budget; past that budget background rows skip steps (they sit in the slots above the live
ones, so that a step can leave them out) and leave at their next sentence; a background request also gives its
slot up at its next sentence where a live one waits for a slot, and resumes from that sentence when it is
admitted again (each sentence is prefilled afresh, so nothing of its audio changes). A request whose next
sentence waits for its prompt to be encoded (``prompt_workers.py``) gives its slot up the same way, parked
until the prompt is there. A request starting a
sentence (its first, the next, or the same again for retry_badcase) is queued for the next prefill; newcomers
may take their first step on their own before the batch's (``newcomers_first``). Running requests occupy slots
0..n-1 in ``running``'s order. One that leaves (finished, cancelled, failed) keeps its slot until the step is
over; between steps ``compact`` moves the last ones into the gaps and says which slot moved where, so the caller
carries their state along. Knows nothing about VoxCPM.
"""

from __future__ import annotations

from collections import deque

from serve_app.model.batched.sequence import Sequence, Status

# Newcomers go first (``first_step_alone``) while the batch has room and time to spare: at most this share of
# its slots held (past it their extra steps take the capacity newcomers are about to queue for), and its steps
# taking at most this share of a patch's audio (so a newcomer's second chunk still comes before its first one
# has played). docs/engines.md (Who goes first) says what was measured.
NEWCOMERS_FIRST_OCCUPANCY = 0.75
NEWCOMERS_FIRST_STEP_SHARE = 0.5
STEP_TIME_SMOOTHING = 0.1  # weight of the newest step in the batch's running mean step time
# While live requests run, background ones keep to a batch whose steps take at most this share of a patch's
# audio (the live streams' margin over real time); past it they leave at their next sentence and are not admitted.
LIVE_STEP_SHARE = 0.5
# While live requests run, at most this many background requests decode their held patches in a step (a call
# of ~10-20 ms on a CPU for a group, more at a sentence's end): a job's rows, admitted together, fall due
# together, and all their calls in one step stalled the live streams for up to seconds. One that waits holds a
# patch more and is due again next step; one whose sentence ended waits out of the steps (``Sequence.ending``).
BACKGROUND_HELD_DECODES = 1


class Scheduler:
    def __init__(
        self, max_batch_size: int, newcomers_first: bool = False, patch_s: float = 0.0, background_share: float = 1.0
    ) -> None:
        """``newcomers_first``: whether newcomers may take their first step on their own; ``patch_s``: the audio
        a step makes per request; ``background_share``: of the slots, what background requests may hold."""
        self.max_batch_size = max_batch_size
        self.background_slots = max(1, int(background_share * max_batch_size))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.starting: list[Sequence] = []  # running requests whose next sentence waits for its prefill
        self.parked: list[Sequence] = []  # requests whose next sentence waits for its prompt, out of the slots
        self.allow_newcomers_first = newcomers_first
        self.patch_s = patch_s
        self.step_s = 0.0  # mean time of the batch's steps (model and VAE calls, post-processing)

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, sequence: Sequence) -> None:
        """A new request, or a parked one whose prompt is ready: waiting for a slot."""
        if sequence in self.parked:
            self.parked.remove(sequence)
        self.waiting.append(sequence)

    def park(self, sequence: Sequence) -> None:
        """The request's next sentence waits for its prompt: its slot is given up (once the step is over) until
        it is added again."""
        sequence.status = Status.WAITING
        self.parked.append(sequence)

    def admit(self) -> list[Sequence]:
        """Waiting requests moved into free slots: live ones oldest first, then background ones within their share."""
        admitted = []
        while len(self.running) < self.max_batch_size and (sequence := self._next_waiting()) is not None:
            self.waiting.remove(sequence)
            sequence.slot, sequence.status = len(self.running), Status.RUNNING
            self.running.append(sequence)
            admitted.append(sequence)
        return admitted

    def _next_waiting(self) -> Sequence | None:
        live = next((sequence for sequence in self.waiting if not sequence.background), None)
        if live is not None or not self.waiting or self._too_slow_for_live():
            return live
        held = sum(sequence.background and sequence.status is Status.RUNNING for sequence in self.running)
        return self.waiting[0] if held < self.background_slots else None

    def start_sentence(self, sequence: Sequence, may_yield: bool = False) -> None:
        """The request's next sentence is ready to prefill (its inputs set). With ``may_yield`` (a sentence that
        follows one just spoken), a background request waits again instead while live ones wait for more slots
        than are free, or the batch's steps are too slow for the live ones running: its slot is theirs, or the
        time its rows took, once the step is over."""
        wanted = self._live_waiting() > self._free_slots() or self._too_slow_for_live()
        if may_yield and sequence.background and wanted:
            sequence.status = Status.WAITING
            self.waiting.append(sequence)  # live requests go first anyway; among jobs' it takes its turn
            return
        self.starting.append(sequence)

    def _too_slow_for_live(self) -> bool:
        return self._live_running() and self.step_s > LIVE_STEP_SHARE * self.patch_s

    def _live_running(self) -> bool:
        return any(not sequence.background and sequence.status is Status.RUNNING for sequence in self.running)

    def _live_waiting(self) -> int:
        return sum(not sequence.background for sequence in self.waiting)

    def _free_slots(self) -> int:
        return self.max_batch_size - sum(sequence.status is Status.RUNNING for sequence in self.running)

    def to_prefill(self) -> list[Sequence]:
        """The requests starting a sentence, still running: prefilled together next."""
        starting, self.starting = self.starting, []
        return [sequence for sequence in starting if sequence.status is Status.RUNNING]

    def holding(self) -> list[Sequence]:
        """Every request not yet finished, waiting, parked or running."""
        everyone = (*self.waiting, *self.parked, *self.running)
        held = (sequence for sequence in everyone if sequence.status is not Status.FINISHED)
        return list(dict.fromkeys(held))  # one that gave its slot up is in both until the step is over

    def cancelled(self) -> list[Sequence]:
        """The requests whose consumers have gone: retired between steps."""
        return [sequence for sequence in self.holding() if sequence.cancelled]

    def retire(self, sequence: Sequence) -> None:
        """Take a request out: a waiting or parked one at once, a running one keeps its slot until ``compact``."""
        status, sequence.status = sequence.status, Status.FINISHED
        if status is Status.WAITING:
            (self.parked if sequence in self.parked else self.waiting).remove(sequence)

    def compact(self) -> list[tuple[int, int]]:
        """Between steps: the running requests back in slots 0..n-1, the last ones moved into the slots of those
        that left. The moves made, (from slot, to slot)."""
        live = sum(sequence.status is Status.RUNNING for sequence in self.running)
        gaps = [slot for slot in range(live) if self.running[slot].status is not Status.RUNNING]
        movers = [sequence for sequence in self.running[live:] if sequence.status is Status.RUNNING]
        for sequence in self.running:
            if sequence.status is not Status.RUNNING:
                sequence.slot = -1
        moves = []
        for gap, sequence in zip(gaps, movers, strict=True):
            moves.append((sequence.slot, gap))
            self.running[gap], sequence.slot = sequence, gap
        del self.running[live:]
        return moves

    def partition(self) -> list[tuple[int, int]]:
        """Between steps, after ``compact``: live requests in the lower slots, background ones above them, so that
        a step can leave the background rows out (``step_rows``). The slots swapped."""
        swaps = []
        low, high = 0, len(self.running) - 1
        while True:
            while low < high and not self.running[low].background:
                low += 1
            while low < high and self.running[high].background:
                high -= 1
            if low >= high:
                return swaps
            one, other = self.running[low], self.running[high]
            self.running[low], self.running[high] = other, one
            one.slot, other.slot = high, low
            swaps.append((low, high))

    def step_rows(self) -> int:
        """How many of the running requests (from slot 0) the batch's next step takes: all, or only the live
        ones (below the background ones: ``partition``) while the steps are too slow for them; but all while live
        requests wait for the slots background ones hold, which give them up only at a sentence's end. Never one
        whose sentence ended and waits for its held patches' decode (``ending``): the background ones wait then."""
        live = sum(not sequence.background for sequence in self.running)
        paused = self._too_slow_for_live() and self._live_waiting() <= self._free_slots()
        return live if paused or any(sequence.ending for sequence in self.running) else len(self.running)

    def held_decodes(self, due: list[Sequence]) -> list[Sequence]:
        """Of the requests whose held patches are due (a group, or a sentence's end), those decoded this step: every
        live one, and while live ones run at most ``BACKGROUND_HELD_DECODES`` background ones, those holding the
        most first (else one always last in the slots would fall ever further behind)."""
        live = [sequence for sequence in due if not sequence.background]
        background = sorted((s for s in due if s.background), key=lambda sequence: -len(sequence.latents))
        return live + background[: BACKGROUND_HELD_DECODES if self._live_running() else None]

    def stepped(self, seconds: float) -> None:
        """The batch's step just took ``seconds`` (its own work, not the newcomers' in between)."""
        self.step_s += STEP_TIME_SMOOTHING * (seconds - self.step_s)

    def newcomers_first(self, fresh: list[Sequence]) -> int | None:
        """The first slot of ``fresh`` (requests that just joined and run) when they take their first step on
        their own, before the batch's; None where the batch's next step is theirs instead: not allowed
        (``first_step_alone``), the batch has no room or time to spare (``NEWCOMERS_FIRST_*``; live requests
        waiting for a slot), none of them streams (nobody hears a first patch before its sentence ends), they
        are more than half as many as the streams running (their own step would cost about the batch's), or
        they do not hold the batch's last slots (one that left meanwhile keeps its slot until the step ends)."""
        first = len(self.running) - len(fresh)
        spare = first <= NEWCOMERS_FIRST_OCCUPANCY * self.max_batch_size and not self._live_waiting()
        spare = spare and self.allow_newcomers_first and self.step_s <= NEWCOMERS_FIRST_STEP_SHARE * self.patch_s
        few = 0 < 2 * len(fresh) <= first
        at_end = sorted(sequence.slot for sequence in fresh) == list(range(first, len(self.running)))
        return first if spare and few and at_end and any(sequence.streaming for sequence in fresh) else None
