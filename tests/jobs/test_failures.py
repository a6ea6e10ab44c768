"""What a failed try of a job item leads to (``jobs/failures.py``), and the queue's bookkeeping of it: tries
counted, a document's first chunk that fails for good letting the rest go on without its voice."""

from __future__ import annotations

import pytest
from ray.serve.exceptions import BackPressureError

from serve_app.errors import BadRequest, Unavailable
from serve_app.jobs.failures import ItemFailed, Then, verdict
from serve_app.jobs.queue import JobQueue, QueuedJob
from serve_app.store.job_store import Job, Progress


@pytest.mark.parametrize(
    ("error", "then", "code"),
    [
        (BackPressureError(num_queued_requests=1, max_queued_requests=1), Then.WAIT, ""),  # the model was full
        (OSError(28, "No space left on device"), Then.WAIT, ""),  # the store, not the model
        (Unavailable("the model replica is being replaced"), Then.RETRY, ""),
        (RuntimeError("the actor died unexpectedly"), Then.RETRY, ""),  # Ray's word for a dead replica
        (BadRequest("text has nothing the model can speak", "text"), Then.FAIL, "bad_request"),
        (ItemFailed("voice_deleted", "voice 'v' was deleted"), Then.FAIL, "voice_deleted"),
        (FileNotFoundError("jobs/abc/items"), Then.DROP, ""),  # the job was deleted meanwhile
    ],
)
def test_each_failure_has_its_rule(error: Exception, then: Then, code: str) -> None:
    outcome = verdict(error)
    assert outcome.then is then and outcome.code == code


def test_a_voiceless_documents_first_chunk_failing_for_good_lets_the_rest_go_on() -> None:
    queue = JobQueue()
    document = QueuedJob.of(Job("book", "alice", "document", 3, 1.0), Progress(), needs_anchor=True, anchored=False)
    queue.add(document)
    picked = queue.next(lambda model: True)
    assert picked is not None and picked[1] == 0
    assert queue.next(lambda model: True) is None  # the rest wait for the voice chunk 0 sets
    assert [document.tried(0), document.tried(0)] == [1, 2]  # a replica failing it: tries counted
    document.in_flight.discard(0)
    document.gave_up(0)
    assert queue.next(lambda model: True) == (document, 1)
