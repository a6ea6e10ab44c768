"""Which item the runner starts next: tenants in turn, oldest job first within one, a model's room respected, and
a document that takes its voice from its first chunk rendering that chunk before the rest."""

from __future__ import annotations

from serve_app.jobs.queue import JobQueue, QueuedJob
from serve_app.store.job_store import Job, Progress


def job(name: str, owner: str, items: int, created: float, model: str = "m") -> Job:
    return Job(name, owner, "items", items, created, model=model)


def queued(j: Job, needs_anchor: bool = False) -> QueuedJob:
    return QueuedJob.of(j, Progress(), needs_anchor, anchored=False)


def starts(queue: JobQueue, count: int, room: object = lambda model: True) -> list[tuple[str, int]]:
    found = []
    for _ in range(count):
        picked = queue.next(room)  # type: ignore[arg-type]
        if picked is None:
            break
        found.append((picked[0].job.job_id, picked[1]))
    return found


def test_tenants_take_turns_whatever_their_jobs_sizes() -> None:
    queue = JobQueue()
    queue.add(queued(job("big", "alice", 10_000, created=1)))
    queue.add(queued(job("small", "bob", 2, created=2)))
    queue.add(queued(job("later", "alice", 5, created=3)))
    assert starts(queue, 5) == [("big", 0), ("small", 0), ("big", 1), ("small", 1), ("big", 2)]
    assert queue.in_flight("m") == 5


def test_only_models_with_room_start_items() -> None:
    queue = JobQueue()
    queue.add(queued(job("a", "alice", 3, created=1, model="full")))
    queue.add(queued(job("b", "bob", 3, created=2, model="free")))
    assert starts(queue, 3, room=lambda model: model == "free") == [("b", 0), ("b", 1), ("b", 2)]
    assert starts(queue, 1, room=lambda model: False) == []


def test_a_document_s_first_chunk_sets_the_voice_of_the_rest() -> None:
    queue = JobQueue()
    document = queued(job("doc", "alice", 3, created=1), needs_anchor=True)
    queue.add(document)
    assert starts(queue, 3) == [("doc", 0)]  # the rest wait for the voice chunk 0 sets
    document.anchored = True
    document.in_flight.discard(0)
    assert starts(queue, 3) == [("doc", 1), ("doc", 2)]


def test_a_resumed_job_renders_what_is_left() -> None:
    progress = Progress(done={0: {}, 2: {}}, failed={1: {"code": "x", "message": "y"}})
    resumed = QueuedJob.of(job("j", "alice", 5, created=1), progress, needs_anchor=False, anchored=False)
    assert list(resumed.pending) == [3, 4] and not resumed.finished


def test_a_document_whose_chunks_continue_each_other_renders_them_one_at_a_time_in_order() -> None:
    queue = JobQueue()
    document = QueuedJob.of(job("book", "alice", 3, created=1), Progress(), False, anchored=False, in_order=True)
    queue.add(document)
    queue.add(queued(job("other", "alice", 2, created=2)))
    assert starts(queue, 4) == [("book", 0), ("other", 0), ("other", 1)]  # the other job fills the room meanwhile
    document.in_flight.discard(0)
    assert starts(queue, 3) == [("book", 1)]
