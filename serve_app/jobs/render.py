"""One job item rendered: the model request it stands for (at background priority), the model's audio for it a
sentence at a time, and that audio as the job keeps it, with what the manifest says of it.

An item of an ``items`` job is kept as the file it is served as (the job's format and rate, at its speaking
rate). A chunk of a document is kept as FLAC at the model's rate (lossless, a third of the size of float32):
the document's audio is the chunks joined and encoded as they are read (``results.py``). The job's spec is
what the ingress resolved when the job was submitted (``ingress/job_requests.py``): voice and adapter by id,
looked up here as its submitter would (a voice deleted since fails the item, naming it).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.decode import resample
from serve_app.audio.stretch import stretch
from serve_app.errors import NotFound
from serve_app.jobs.failures import ItemFailed
from serve_app.model.plan import own_voice
from serve_app.model.types import ModelInfo, PromptAudio, SegmentEnd, Span, SynthesisRequest
from serve_app.store.adapter_store import Adapter, AdapterStore
from serve_app.store.job_store import Job
from serve_app.store.voice_store import Voice, VoiceStore

Record = TypeVar("Record")
CHUNK_FORMAT = "flac"  # how a document's chunks are kept
ROUTE = "/api/jobs"  # the model replicas' metrics label for job work


@dataclass(frozen=True)
class Rendered:
    audio: bytes  # as kept: the item's file, or a chunk's FLAC
    facts: dict[str, Any]  # for the manifest: seconds, sample_rate, samples, segments
    anchor: PromptAudio | None = None  # a document's first chunk: its voice for the rest
    tail: PromptAudio | None = None  # a chunk's last sentence: what the next chunk continues (``continues``)


def request_for(
    job: Job,
    spec: dict[str, Any],
    index: int,
    voices: VoiceStore,
    adapters: AdapterStore,
    anchor: PromptAudio | None,
    tail: PromptAudio | None = None,
    prompt_rate: int = 0,
) -> SynthesisRequest:
    """Item ``index`` of the job as a model request: an item's text, or a document's chunk as its spans (spoken
    after ``anchor`` when the document has no voice of its own; continuing ``tail``, the chunk before, when
    the document's chunks continue each other: ``continued``)."""
    if job.kind == "items":
        item = spec["items"][index]
        settings, text, spans = item["settings"], item["text"], ()
        if "spans" in item:  # SSML, as read when the job was submitted
            text, spans = "", tuple(_span(span, job, voices) for span in item["spans"])
    else:
        settings, text = spec["document"]["settings"], ""
        chunk = spec["document"]["chunks"][index]["spans"]
        spans = tuple(Span(span["text"], pause_after=span["pause_after"]) for span in chunk)
    knobs = {key: value for key, value in settings.items() if key not in ("voice_id", "adapter_id")}
    request = SynthesisRequest(
        text=text,
        spans=spans,
        voice=_voice(settings.get("voice_id"), job, voices),
        prompt=anchor if anchor is not None and anchor.text is not None else None,
        reference=anchor if anchor is not None and anchor.text is None else None,  # VoxCPM2, a described voice
        adapter=_adapter(settings.get("adapter_id"), job, adapters),
        request_id=f"job-{job.job_id}-{index}",
        route=ROUTE,
        priority="background",
        **knobs,
    )
    return request if tail is None else continued(request, tail, voices, prompt_rate)


def sent_characters(spec: dict[str, Any], index: int, request: SynthesisRequest) -> int:
    """What usage counts of the item: its text as sent (SSML with its markup), or a document's chunk's text."""
    items = spec.get("items")
    return len(items[index]["text"]) if items else sum(len(span.text) for span in request.spoken)


def _span(stored: dict[str, Any], job: Job, voices: VoiceStore) -> Span:
    voice = _voice(stored["voice_id"], job, voices)
    return Span(stored["text"], voice, stored["speed"], stored["pause_after"])


def continues(spec: dict[str, Any]) -> bool:
    """A document whose chunks each continue the one before (``jobs.continuation``, decided at submission)."""
    return bool(spec.get("document", {}).get("continuation"))


def continued(request: SynthesisRequest, tail: PromptAudio, voices: VoiceStore, prompt_rate: int) -> SynthesisRequest:
    """A VoxCPM2 chunk continuing the one before: ``tail`` (its last sentence, with its text) as the continuation
    prompt, the document's voice beside it as an isolated reference (voxcpm's "ref_continuation"): a saved
    voice's reference recording (else its recording, without its transcript), or the document's anchor. A
    designed voice is not continued: its description styles it, which voxcpm cannot do to a continuation."""
    voice = request.voice
    if voice is not None and voice.description:
        return request
    if voice is None:
        reference = request.prompt or request.reference
        assert reference is not None, "a document without a voice is anchored before its chunks continue"
    else:
        recorded = voice.reference_seconds is not None
        samples, rate = _kept("voice", voice.voice_id, lambda: _voice_audio(voices, voice, recorded))
        reference = PromptAudio(resample(samples, rate, prompt_rate), prompt_rate, None)
    isolated = dataclasses.replace(reference, text=None)
    return dataclasses.replace(request, text="", voice=None, prompt=tail, reference=isolated)


def _voice_audio(voices: VoiceStore, voice: Voice, reference: bool) -> tuple[np.ndarray, int]:
    try:
        return voices.audio(voice, reference)
    except (OSError, sf.LibsndfileError):
        raise NotFound(f"no saved voice {voice.voice_id!r}", "voice_id") from None


def needs_anchor(job: Job, spec: dict[str, Any]) -> bool:
    """A document with no voice of its own: its first chunk's voice is kept for the rest."""
    return job.kind == "document" and spec["document"]["settings"].get("voice_id") is None


def kept(
    job: Job,
    spec: dict[str, Any],
    index: int,
    samples: np.ndarray,
    ends: list[SegmentEnd],
    info: ModelInfo,
    anchoring: bool,
) -> Rendered:
    """The model's audio for item ``index`` (at its rate, each sentence's end marked) as the job keeps it; its
    sentences that still failed the bad-case check after retry_badcase's tries named in its facts."""
    output, rate = spec["output"], info.sample_rate
    speed = output["speed"]
    starts = [0, *(end.end for end in ends[:-1])]
    segments = [
        {"index": i, "text": end.text, "start_s": start / rate / speed, "end_s": end.end / rate / speed}
        for i, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]
    anchor = _anchor(samples, ends, info, spec["document"]["settings"].get("instructions")) if anchoring else None
    tail = _tail(samples, ends, info) if continues(spec) else None
    if speed != 1.0:
        samples = stretch(samples, speed, rate)
    facts: dict[str, Any] = {"seconds": len(samples) / rate, "samples": len(samples), "segments": segments}
    if badcases := [end.index for end in ends if end.too_long]:  # reported in the status and the manifest
        facts["badcase_sentences"] = badcases
        facts["id"] = spec["items"][index].get("id") if job.kind == "items" else None
    if job.kind == "document":
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_24")
        return Rendered(buffer.getvalue(), {**facts, "sample_rate": rate}, anchor, tail)
    out_rate = output["sample_rate"]
    audio = codecs.encode_whole(AudioFormat(output["format"]), samples, rate, out_rate)
    return Rendered(audio, {**facts, "sample_rate": out_rate})


def _anchor(samples: np.ndarray, ends: list[SegmentEnd], info: ModelInfo, instructions: str | None) -> PromptAudio:
    """The chunk's first sentence (its pause cut) as the prompt of every later chunk: the rule a request keeps
    its own voice by across its sentences (``plan.own_voice``), so the whole document has one prompt."""
    first = ends[0]
    return own_voice(np.trim_zeros(samples[: first.end], "b"), info, first.text, instructions)


def _tail(samples: np.ndarray, ends: list[SegmentEnd], info: ModelInfo) -> PromptAudio:
    """The chunk's last sentence (its pause cut), with its text: what the next chunk continues."""
    start = ends[-2].end if len(ends) > 1 else 0
    return own_voice(np.trim_zeros(samples[start : ends[-1].end], "b"), info, ends[-1].text, None)


def _voice(voice_id: str | None, job: Job, voices: VoiceStore) -> Voice | None:
    return None if voice_id is None else _kept("voice", voice_id, lambda: voices.get(voice_id, job.principal()))


def _adapter(adapter_id: str | None, job: Job, adapters: AdapterStore) -> Adapter | None:
    return (
        None if adapter_id is None else _kept("adapter", adapter_id, lambda: adapters.get(adapter_id, job.principal()))
    )


def _kept(what: str, record_id: str, lookup: Callable[[], Record]) -> Record:
    """A voice or adapter the job was submitted with, as its submitter sees it now; one deleted since fails the item."""
    try:
        return lookup()
    except NotFound:
        raise ItemFailed(f"{what}_deleted", f"{what} {record_id!r} was deleted after the job was submitted") from None
