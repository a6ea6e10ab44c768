"""The scheduler alone: admission in order, slots kept contiguous between steps, the newcomers-first policy."""

from __future__ import annotations

import pytest

from serve_app.model.batched.scheduler import STEP_TIME_SMOOTHING, Scheduler
from serve_app.model.batched.sequence import Sequence, Status
from tests.model.batched.engines import make_sequence


def test_admission_is_in_order_within_the_batch_and_slots_close_up_between_steps() -> None:
    scheduler = Scheduler(max_batch_size=3)
    a, b, c, d = (make_sequence(name) for name in "abcd")
    for sequence in (a, b, c, d):
        scheduler.add(sequence)
    assert scheduler.admit() == [a, b, c] and [s.slot for s in (a, b, c)] == [0, 1, 2]
    assert d.status is Status.WAITING and scheduler.admit() == []
    scheduler.retire(a)
    assert a.status is Status.FINISHED and scheduler.running == [a, b, c]  # its slot kept until the step ends
    assert scheduler.admit() == []  # and not given away
    assert scheduler.compact() == [(2, 0)]  # the last request moves into the freed slot
    assert scheduler.running == [c, b] and (c.slot, b.slot) == (0, 1) and a.slot == -1
    assert scheduler.admit() == [d] and d.slot == 2
    scheduler.retire(d)
    assert scheduler.compact() == []  # the last one leaves: nothing moves
    scheduler.retire(d)  # twice: nothing happens
    assert scheduler.compact() == [] and scheduler.running == [c, b]
    waiting = make_sequence("e")
    scheduler.add(waiting)
    scheduler.retire(waiting)
    assert not scheduler.waiting and waiting.status is Status.FINISHED


def test_compaction_fills_every_gap_from_the_end() -> None:
    scheduler = Scheduler(max_batch_size=6)
    sequences = [make_sequence(str(slot)) for slot in range(6)]
    for sequence in sequences:
        scheduler.add(sequence)
    scheduler.admit()
    for slot in (0, 2, 5):
        scheduler.retire(sequences[slot])
    assert scheduler.compact() == [(3, 0), (4, 2)]
    assert [sequence.slot for sequence in scheduler.running] == [0, 1, 2]
    assert scheduler.running == [sequences[3], sequences[1], sequences[4]]


def test_cancelled_requests_and_sentences_to_prefill_are_the_running_ones() -> None:
    scheduler = Scheduler(max_batch_size=1)
    running, waiting = make_sequence("running"), make_sequence("waiting")
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.admit()
    assert scheduler.cancelled() == []
    waiting.cancelled = running.cancelled = True
    assert scheduler.cancelled() == [waiting, running]
    scheduler.start_sentence(running)
    scheduler.start_sentence(waiting)  # never admitted: not prefilled
    assert scheduler.to_prefill() == [running] and scheduler.to_prefill() == []
    scheduler.start_sentence(running)
    scheduler.retire(running)
    assert scheduler.to_prefill() == [] and scheduler.holding() == [waiting]


def _batch(running: int, fresh: int, streaming: bool = True) -> tuple[Scheduler, list[Sequence]]:
    """A scheduler of 8 slots allowed newcomers first, with time to spare: ``running`` requests, then ``fresh``."""
    scheduler = Scheduler(max_batch_size=8, newcomers_first=True, patch_s=0.08)
    for index in range(running + fresh):
        scheduler.add(make_sequence(str(index), streaming))
    admitted = scheduler.admit()
    return scheduler, admitted[running:]


def test_newcomers_go_first_while_the_batch_has_room_and_time_to_spare() -> None:
    scheduler, fresh = _batch(running=4, fresh=2)
    assert scheduler.newcomers_first(fresh) == 4
    scheduler.stepped(1.0)  # steps slower than half a patch's audio: no time to spare
    assert scheduler.newcomers_first(fresh) is None
    assert Scheduler(8, newcomers_first=False, patch_s=0.08).newcomers_first([]) is None


@pytest.mark.parametrize(
    ("running", "fresh", "streaming", "why"),
    [
        (7, 1, True, "the batch holds more than NEWCOMERS_FIRST_OCCUPANCY of its slots"),
        (2, 2, True, "as many newcomers as running streams: their step would cost the batch's"),
        (4, 1, False, "none of them streams"),
        (0, 1, True, "nothing runs: the batch's step is theirs"),
    ],
)
def test_newcomers_join_the_batch_step_otherwise(running: int, fresh: int, streaming: bool, why: str) -> None:
    scheduler, newcomers = _batch(running, fresh, streaming)
    assert scheduler.newcomers_first(newcomers) is None, why


def test_newcomers_wait_for_the_batch_while_requests_wait_for_a_slot_or_one_left_among_them() -> None:
    scheduler, fresh = _batch(running=4, fresh=2)
    scheduler.add(make_sequence("queued"))
    assert scheduler.newcomers_first(fresh) is None  # requests waiting for a slot
    scheduler.waiting.clear()
    scheduler.retire(fresh[1])  # it left; its slot is kept until the step ends: fresh[0] is not at the end
    assert scheduler.newcomers_first([fresh[0]]) is None


def test_live_requests_are_admitted_before_background_ones_which_keep_to_their_share() -> None:
    scheduler = Scheduler(max_batch_size=4, background_share=0.5)
    jobs = [make_sequence(f"job{index}", priority="background") for index in range(3)]
    live = [make_sequence(f"live{index}") for index in range(3)]
    for sequence in (*jobs, live[0]):
        scheduler.add(sequence)
    assert scheduler.admit() == [live[0], jobs[0], jobs[1]]  # the live one first; jobs hold 2 slots of 4
    assert scheduler.admit() == [] and jobs[2].status is Status.WAITING
    scheduler.add(live[1])
    assert scheduler.admit() == [live[1]]  # the last slot is a live request's


def test_a_background_request_gives_its_slot_up_at_its_next_sentence_while_live_ones_wait() -> None:
    scheduler = Scheduler(max_batch_size=2)
    job, live = make_sequence("job", priority="background"), make_sequence("live")
    scheduler.add(job)
    scheduler.add(live)
    scheduler.admit()
    late = make_sequence("late")
    scheduler.add(late)
    scheduler.start_sentence(job)  # its first sentence, as it is admitted: never yields
    assert scheduler.to_prefill() == [job]
    scheduler.start_sentence(live, may_yield=True)  # live requests never yield
    assert scheduler.to_prefill() == [live]
    scheduler.start_sentence(job, may_yield=True)  # its next sentence, with a live request waiting: it yields
    assert job.status is Status.WAITING and scheduler.to_prefill() == []
    assert scheduler.compact() == [] and job.slot == -1 and scheduler.running == [live]  # the live one went first
    assert scheduler.admit() == [late]
    scheduler.retire(live)
    scheduler.compact()
    assert scheduler.admit() == [job]  # back once no live request waits
    scheduler.start_sentence(job, may_yield=True)  # nobody waits: it goes on
    assert scheduler.to_prefill() == [job]


def test_a_background_request_keeps_its_slot_where_one_is_free_for_the_live_request() -> None:
    scheduler = Scheduler(max_batch_size=2)
    job, ending, live = make_sequence("job", priority="background"), make_sequence("ending"), make_sequence("live")
    for sequence in (job, ending):
        scheduler.add(sequence)
    scheduler.admit()
    scheduler.add(live)
    scheduler.retire(ending)  # its slot is free at the step's end
    scheduler.start_sentence(job, may_yield=True)
    assert job.status is Status.RUNNING and scheduler.to_prefill() == [job]


def test_background_requests_leave_and_stay_out_while_the_steps_are_too_slow_for_the_live_ones() -> None:
    scheduler = Scheduler(max_batch_size=4, patch_s=0.04)
    job, other_job = (make_sequence(name, priority="background") for name in ("job", "other"))
    live = make_sequence("live")
    for sequence in (job, live):
        scheduler.add(sequence)
    scheduler.admit()
    scheduler.stepped(0.019 / STEP_TIME_SMOOTHING)  # a mean step of 19 ms: within half a 40 ms patch
    scheduler.start_sentence(job, may_yield=True)
    assert job.status is Status.RUNNING and scheduler.to_prefill() == [job]
    scheduler.stepped(0.1)  # now well past it
    scheduler.start_sentence(job, may_yield=True)
    assert job.status is Status.WAITING and scheduler.to_prefill() == []
    scheduler.compact()
    scheduler.add(other_job)
    assert scheduler.admit() == []  # free slots, but not for background work while the live stream needs the time
    scheduler.retire(live)
    scheduler.compact()
    assert scheduler.admit() == [job, other_job]  # no live request runs: the jobs are back


def test_live_requests_are_kept_below_background_ones_and_a_slow_batch_steps_them_alone() -> None:
    scheduler = Scheduler(max_batch_size=5, patch_s=0.04)
    sequences = [
        make_sequence(name, priority="background" if name.startswith("j") else "interactive")
        for name in ("j0", "l1", "j2", "l3", "l4")
    ]
    for sequence in sequences:
        scheduler.add(sequence)
    scheduler.background_slots = 5
    running = scheduler.admit()
    assert [s.request.text for s in running] == ["l1", "l3", "l4", "j0", "j2"]  # live first: already in order
    assert scheduler.partition() == []
    scheduler.retire(running[0])
    scheduler.compact()  # j2 moves into slot 0, below live ones
    assert [s.request.text for s in scheduler.running] == ["j2", "l3", "l4", "j0"]
    assert scheduler.partition() == [(0, 2)]
    assert [(s.request.text, s.slot) for s in scheduler.running] == [("l4", 0), ("l3", 1), ("j2", 2), ("j0", 3)]
    assert scheduler.step_rows() == 4  # steps within the budget: every row
    scheduler.stepped(0.1 / STEP_TIME_SMOOTHING)
    assert scheduler.step_rows() == 2  # too slow for the live streams: theirs alone


def test_a_request_that_gave_its_slot_up_is_held_once() -> None:
    scheduler = Scheduler(max_batch_size=1)
    job, live = make_sequence("job", priority="background"), make_sequence("live")
    scheduler.add(job)
    scheduler.admit()
    scheduler.add(live)
    scheduler.start_sentence(job, may_yield=True)  # in the queue again, in its slot until the step is over
    assert job in scheduler.waiting and job in scheduler.running
    assert scheduler.holding() == [live, job]


def test_a_request_parked_for_its_prompt_gives_its_slot_up_and_comes_back_when_added_again() -> None:
    scheduler = Scheduler(max_batch_size=2)
    parked, other, cancelled = make_sequence("parked"), make_sequence("other"), make_sequence("cancelled")
    for sequence in (parked, other):
        scheduler.add(sequence)
    scheduler.admit()
    scheduler.park(parked)  # its next sentence waits for its prompt's encoding
    assert parked.status is Status.WAITING and scheduler.holding() == [parked, other]
    scheduler.compact()
    assert scheduler.running == [other] and parked.slot == -1
    assert scheduler.admit() == []  # parked: not waiting for a slot
    scheduler.add(parked)  # the prompt is ready
    assert scheduler.admit() == [parked] and scheduler.parked == []
    scheduler.add(cancelled)
    scheduler.admit()  # no slot: it waits
    scheduler.park(other)
    scheduler.retire(other)  # one cancelled while parked leaves the parked ones
    assert scheduler.parked == [] and other not in scheduler.holding()


def test_while_live_requests_run_one_background_request_a_step_decodes_its_held_patches_the_most_held_first() -> None:
    scheduler = Scheduler(max_batch_size=4)
    live, *jobs = [make_sequence("live"), *(make_sequence(f"job{n}", priority="background") for n in range(3))]
    for held, job in zip((2, 5, 3), jobs, strict=True):
        job.latents = [None] * held  # type: ignore[list-item]
    for sequence in (live, *jobs):
        scheduler.add(sequence)
    scheduler.background_slots = 3
    scheduler.admit()
    assert scheduler.held_decodes([*jobs, live]) == [live, jobs[1]]  # the others wait a step: their turn comes
    assert scheduler.step_rows() == 4
    jobs[0].ending = True  # its sentence ended; its patches wait for a step with time for them
    assert scheduler.step_rows() == 1  # never stepped again meanwhile, nor the other jobs
    scheduler.retire(live)
    scheduler.compact()
    assert scheduler.held_decodes(jobs) == [jobs[1], jobs[2], jobs[0]]  # no live request: all at once
