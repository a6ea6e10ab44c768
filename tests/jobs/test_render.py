"""A job's item as a model request: a document's chunk continuing the one before it (``jobs.continuation``), in
the document's voice as an isolated reference beside the chunk before's end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.jobs.failures import ItemFailed
from serve_app.jobs.render import continued
from serve_app.model.types import PromptAudio, Span, SynthesisRequest
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import VoiceStore

ADMIN = Principal("house", True, "k")
RATE = 16000
TAIL = PromptAudio(np.full(800, 0.1, np.float32), RATE, "the chunk before's last sentence.")
CHUNK = (Span("This chunk.", pause_after=0.6),)


def _tone(hz: float, seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_a_chunk_after_the_anchor_continues_the_tail_with_the_anchor_as_its_reference(tmp_path: Path) -> None:
    anchor = PromptAudio(_tone(220), RATE, "the first sentence.")
    request = SynthesisRequest(spans=CHUNK, prompt=anchor, seed=1)
    got = continued(request, TAIL, VoiceStore(tmp_path), RATE)
    assert got.prompt is TAIL and got.voice is None and got.spans == CHUNK and got.seed == 1
    assert got.reference is not None and got.reference.text is None
    assert np.array_equal(got.reference.samples, anchor.samples)


@pytest.mark.parametrize("with_reference", [True, False])
def test_a_chunk_in_a_saved_voice_continues_the_tail_with_the_voice_as_its_reference(
    tmp_path: Path, with_reference: bool
) -> None:
    """The voice's isolated reference recording where it has one, else its recording without the transcript,
    at the model's prompt rate; a voice deleted since fails the item, naming it."""
    store = VoiceStore(tmp_path)
    reference = (_tone(440, rate=8000), 8000) if with_reference else None
    voice = store.create(ADMIN, "narrator", "its transcript", _tone(330), RATE, reference=reference)
    got = continued(SynthesisRequest(spans=CHUNK, voice=voice), TAIL, store, RATE)
    assert got.prompt is TAIL and got.voice is None
    assert got.reference is not None and got.reference.text is None and got.reference.sample_rate == RATE
    want = store.audio(voice, reference=with_reference)[0]
    assert len(got.reference.samples) == (len(want) * 2 if with_reference else len(want))  # 8 kHz resampled
    store.delete(voice.voice_id, ADMIN)
    with pytest.raises(ItemFailed) as failed:
        continued(SynthesisRequest(spans=CHUNK, voice=voice), TAIL, store, RATE)
    assert failed.value.code == "voice_deleted"


def test_a_designed_voice_is_not_continued(tmp_path: Path) -> None:
    """Its description styles it, which voxcpm cannot do to a continuation: the chunk is as without one."""
    store = VoiceStore(tmp_path)
    voice = store.create(ADMIN, "designed", "a sample", _tone(330), RATE, description="a calm voice")
    request = SynthesisRequest(spans=CHUNK, voice=voice)
    assert continued(request, TAIL, store, RATE) is request
