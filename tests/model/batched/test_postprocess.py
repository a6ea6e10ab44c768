"""Post-processing alone (host bookkeeping, no model): what a step does to a request's sentence, and what the
request's consumer receives."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from serve_app.audio.seams import Crossfader
from serve_app.model.batched.postprocess import GENERATING, Outcome, Postprocessor
from serve_app.model.batched.sequence import Sequence
from serve_app.model.plan import Sentence, Spoken
from serve_app.model.runtime import VoxCPMRuntime
from tests.model.batched.engines import make_sequence

TEXT_TOKENS = 4  # every sentence's, in this runtime: retry_badcase retries past 6 x 4 = 24 patches


def _sentence(streaming: bool, min_len: int = 2, max_len: int = 100) -> tuple[Postprocessor, Sequence]:
    info = SimpleNamespace(sample_rate=16000)
    runtime = SimpleNamespace(v2=True, text_tokens=lambda text: TEXT_TOKENS, info=info, seam_samples=0)
    runtime.too_long = lambda request, text, patches: VoxCPMRuntime.too_long(runtime, request, text, patches)  # type: ignore[arg-type]
    sequence = make_sequence("one sentence", streaming)
    sequence.sentence = Sentence("one sentence", None, min_len, max_len)
    sequence.inputs = SimpleNamespace(min_len=min_len, max_len=max_len, context_patches=0)  # type: ignore[assignment]
    sequence.attempts = 1
    return Postprocessor(runtime), sequence  # type: ignore[arg-type]


@pytest.mark.parametrize("streaming", [True, False])
def test_a_sentence_ends_at_the_stop_flag_past_min_len_or_at_its_step_cap(streaming: bool) -> None:
    post, sequence = _sentence(streaming, min_len=2, max_len=10)
    assert post.outcome(sequence, stop=True) is Outcome.GOES_ON  # step 0: not past min_len
    sequence.step = 3
    assert post.outcome(sequence, stop=False) is Outcome.GOES_ON
    assert post.outcome(sequence, stop=True) is Outcome.ENDS
    sequence.step = 9  # its tenth step is its last
    assert post.outcome(sequence, stop=False) is Outcome.ENDS


def test_a_non_streaming_sentence_that_ran_too_long_is_retried_up_to_its_limit() -> None:
    post, sequence = _sentence(streaming=False)
    sequence.step = 23  # its 24th patch: 6 x its 4 text tokens
    assert post.outcome(sequence, stop=True) is Outcome.RETRIES
    sequence.attempts = sequence.request.retry_badcase_max_times
    assert post.outcome(sequence, stop=True) is Outcome.ENDS and sequence.too_long  # kept, and told as such
    sequence.step = 22
    assert post.outcome(sequence, stop=True) is Outcome.ENDS and not sequence.too_long
    post, stream = _sentence(streaming=True)  # a stream's audio is already heard: never retried
    stream.step = 23
    assert post.outcome(stream, stop=True) is Outcome.ENDS


def test_a_stream_hears_each_piece_and_the_plan_hears_the_sentence_at_its_end() -> None:
    post, sequence = _sentence(streaming=True)
    heard: list[object] = []
    spoken: list[Spoken] = []

    def plan() -> Iterator[object]:
        spoken.append((yield "the next sentence"))

    sequence.deliver, sequence.crossfade = heard.append, Crossfader(0)
    sequence.plan = plan()  # type: ignore[assignment]
    next(sequence.plan)  # type: ignore[arg-type]
    first, last = np.ones(4, dtype=np.float32), np.full(4, 2.0, dtype=np.float32)
    assert post.emit(sequence, first, Outcome.GOES_ON) is GENERATING
    assert post.emit(sequence, None, Outcome.GOES_ON) is GENERATING  # its patch held for a later call
    assert (sequence.step, sequence.position) == (2, 2)
    assert post.emit(sequence, last, Outcome.ENDS) is None  # the plan has nothing after it
    assert [piece.tolist() for piece in heard] == [first.tolist(), last.tolist()]  # type: ignore[union-attr]
    assert spoken[0].steps == 3 and spoken[0].audio.tolist() == [*first.tolist(), *last.tolist()]


def test_a_non_streaming_request_hears_the_whole_sentence_at_its_end() -> None:
    post, sequence = _sentence(streaming=False)
    heard: list[object] = []
    sequence.deliver, sequence.crossfade = heard.append, Crossfader(0)
    sequence.plan = iter(())  # type: ignore[assignment]
    piece = np.ones(4, dtype=np.float32)
    assert post.emit(sequence, piece, Outcome.GOES_ON) is GENERATING and heard == []
    assert post.emit(sequence, None, Outcome.RETRIES) is sequence.sentence  # the same sentence again
    assert heard == []
