"""Where each sentence ends in a stream that asks (``segments``), from both engines: after the sentence's audio
or before the next one's, at the middle of the crossfade between them, the last at the stream's end; the
audio itself unchanged by asking."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from serve_app.model.engine import joined
from serve_app.model.types import SegmentEnd, SynthesisRequest

TEXT = "第一句话在这里。Then a second sentence follows."


async def items(engine: Any, request: SynthesisRequest, streaming: bool) -> list[Any]:
    produce = engine.stream if streaming else engine.sentences
    return [item async for item in produce(request, lambda: None)]


@pytest.mark.parametrize("kind", ["voxcpm", "batched"])
@pytest.mark.parametrize("streaming", [True, False])
def test_each_sentence_says_where_it_ends(synthetic_engine: Callable[..., Any], kind: str, streaming: bool) -> None:
    engine = synthetic_engine("tiny-voxcpm1.5", kind, max_batch_size=2, kv_cache_length=512)
    request = SynthesisRequest(text=TEXT, seed=3, max_len=300, retry_badcase=False)
    plain = asyncio.run(items(engine, request, streaming))
    marked = asyncio.run(items(engine, SynthesisRequest(**{**request.__dict__, "segments": True}), streaming))
    assert not any(isinstance(item, SegmentEnd) for item in plain)
    ends = [item for item in marked if isinstance(item, SegmentEnd)]
    audio = joined(item for item in marked if not isinstance(item, SegmentEnd))
    assert np.array_equal(audio, joined(plain))  # asking changes nothing of the audio
    assert [(end.index, end.text) for end in ends] == [(0, "第一句话在这里。"), (1, "Then a second sentence follows.")]
    assert 0 < ends[0].end < ends[1].end == len(audio)
    # each end arrives no later than the sentence's last sample
    sent = 0
    for item in marked:
        if isinstance(item, SegmentEnd):
            assert item.end >= sent - engine.runtime.seam_samples
        else:
            sent += len(item)


@pytest.mark.parametrize("preset", ["tiny-voxcpm1.5", "tiny-voxcpm2"])
def test_a_sentence_still_too_long_after_its_retries_is_told_alike_by_both_engines(
    synthetic_engine: Callable[..., Any], preset: str
) -> None:
    """voxcpm's bad-case check, on voxcpm's own count of patches: a ratio no sentence stays under marks each
    sentence's end after its retries (what a job reports); a sentence cut by the step budget well under the
    ratio is not marked; streams are not checked (voxcpm does not retry them)."""
    reference = synthetic_engine(preset, "voxcpm")
    batched = synthetic_engine(preset, "batched", max_batch_size=2, kv_cache_length=512)
    bad = SynthesisRequest(
        text=TEXT, seed=3, max_len=300, retry_badcase_max_times=2, retry_badcase_ratio_threshold=0.1, segments=True
    )
    fine = SynthesisRequest(text="Then a second sentence follows.", seed=3, max_len=20, segments=True)
    for request, want in ((bad, [True, True]), (fine, [False])):
        for engine in (reference, batched):
            ends = [item for item in asyncio.run(items(engine, request, False)) if isinstance(item, SegmentEnd)]
            assert [end.too_long for end in ends] == want
    streamed = asyncio.run(items(batched, bad, True))
    assert not any(item.too_long for item in streamed if isinstance(item, SegmentEnd))
