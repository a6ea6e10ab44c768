"""One sentence splitter (serve_app/text/sentences.py) from the WebSocket to the model: a sentence the socket
cut, in whatever pieces its text came, is one segment, and the model does not split it again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from serve_app.model.types import SegmentEnd, SynthesisRequest
from tests.conftest import TINY_V15_STEP_FRAMES
from tests.service.test_ws import STEPS, events_until, open_ws, ws_url

ISSUE_38 = "Dr. Watson met Prof. Moriarty at the station; then they left."
PIECES = ["Dr", ". Wat", "son met Prof", ".", " Moriarty at the station", ";", " then they left", ".", " And"]


def test_a_sentence_sent_in_pieces_is_one_segment(url: str) -> None:
    with open_ws(ws_url(url), key=None, timestamps="segment") as ws:
        for piece in PIECES:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "end"}))
        events, frames = events_until(ws, "done")
    segments = [e for e in events if e["type"] == "segment"]
    assert [s["text"] for s in segments] == [ISSUE_38, "And"]
    stamps = [e for e in events if e["type"] == "timestamps"]
    assert [[w["word"] for w in s["words"]] for s in stamps] == [[ISSUE_38], ["And"]]
    # each segment is one generation of its own max_len (the tiny model runs to it): not a budget split in three
    assert sum(map(len, frames)) == events[-1]["total_samples"] * 2 == 2 * 2 * STEPS * TINY_V15_STEP_FRAMES


async def segment_ends(engine: Any, request: SynthesisRequest) -> list[SegmentEnd]:
    return [item async for item in engine.stream(request, lambda: None) if isinstance(item, SegmentEnd)]


@pytest.mark.parametrize("kind", ["voxcpm", "batched"])
def test_the_model_speaks_a_cut_sentence_as_one_segment(synthetic_engine: Callable[..., Any], kind: str) -> None:
    """What the socket sends (``one_sentence``) is one sentence at the model, though the rule would split it;
    over HTTP the same text is split once, by the same rule."""
    engine = synthetic_engine("tiny-voxcpm1.5", kind, max_batch_size=2, kv_cache_length=512)
    text = "第一句话在这里。Then a second sentence follows."
    request = SynthesisRequest(text=text, seed=3, max_len=300, retry_badcase=False, segments=True)
    split = asyncio.run(segment_ends(engine, request))
    assert [end.text for end in split] == ["第一句话在这里。", "Then a second sentence follows."]
    whole = asyncio.run(segment_ends(engine, SynthesisRequest(**{**request.__dict__, "one_sentence": True})))
    assert [end.text for end in whole] == [text]
