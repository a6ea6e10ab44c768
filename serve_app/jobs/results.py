"""A job's results as a client downloads them, read from the job store as they are sent (never whole in memory).

- The manifest: one JSON line per finished item (index, the client's id, text, the member name of its audio,
  seconds, sample rate; and with ``timestamps``, its segments and words: words estimated from each sentence's
  exact bounds, ``timing/words.py``). For a document, one line per chunk, times counted from the document's start.
- The ZIP (ZIP64, streamed by ``stream-zip``): ``manifest.jsonl`` and every finished item's file under a member
  name the service makes from its index; for a document, the whole document's audio as one member.
- A document's audio: its chunks in order, joined with the service's crossfade (``audio/seams.py``) and encoded
  in the job's format as they are read.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from stream_zip import ZIP_64, stream_zip

from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.seams import SEAM_SECONDS, Crossfader
from serve_app.store.job_store import Job, JobStore, Progress
from serve_app.timing.words import estimated

MANIFEST = "manifest.jsonl"
FILE_MODE = stat.S_IFREG | 0o644


def member_name(job: Job, index: int, audio_format: str) -> str:
    """An item's file in the ZIP: its index, zero-padded so the members sort in order (never the client's id)."""
    return f"{index:0{len(str(max(job.items_total - 1, 0)))}d}.{audio_format}"


def document_name(audio_format: str) -> str:
    return f"document.{audio_format}"


def manifest(job: Job, spec: dict[str, Any], progress: Progress) -> Iterator[dict[str, Any]]:
    """The manifest's lines, in item order."""
    mode, audio_format = spec["output"]["timestamps"], spec["output"]["format"]
    offset, seam = 0.0, 0.0
    for index in sorted(progress.done):
        facts = progress.done[index]
        if job.kind == "items":
            item = spec["items"][index]
            line = {"index": index, "id": item.get("id"), "text": item["text"]}
            line |= {"file": member_name(job, index, audio_format), "seconds": round(facts["seconds"], 3)}
            line["sample_rate"] = facts["sample_rate"]
            shift = 0.0
        else:
            chunk = spec["document"]["chunks"][index]
            offset -= seam  # each join overlaps the chunks by the crossfade
            line = {"index": index, "chapter": chunk["chapter"], "text": " ".join(s["text"] for s in chunk["spans"])}
            line |= {"start_s": round(offset, 3), "end_s": round(offset + facts["seconds"], 3)}
            shift, seam = offset, SEAM_SECONDS
            offset += facts["seconds"]
        if mode is not None:
            line |= _timestamps(facts["segments"], mode, shift)
        if "badcase_sentences" in facts:  # still failed the bad-case check after its retries
            line["badcase_sentences"] = facts["badcase_sentences"]
        yield line


def _timestamps(segments: list[dict[str, Any]], mode: str, shift: float) -> dict[str, Any]:
    bounds = [
        {
            "index": s["index"],
            "text": s["text"],
            "start_s": round(s["start_s"] + shift, 3),
            "end_s": round(s["end_s"] + shift, 3),
        }
        for s in segments
    ]
    if mode == "segment":
        return {"segments": bounds}
    words = [w.public() for s in bounds for w in estimated(s["text"], s["start_s"], s["end_s"])]
    return {"segments": bounds, "words": words, "source": "estimated"}


def manifest_bytes(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


def zipped(store: JobStore, job: Job, spec: dict[str, Any], progress: Progress) -> Iterator[bytes]:
    """The job's results as a ZIP64, produced as it is read (a thread iterates it: it reads files)."""
    modified = datetime.fromtimestamp(job.created)
    audio_format = spec["output"]["format"]

    def members() -> Iterator[tuple[str, datetime, int, Any, Iterable[bytes]]]:
        yield MANIFEST, modified, FILE_MODE, ZIP_64, (manifest_bytes(manifest(job, spec, progress)),)
        if job.kind == "document":
            audio = document_audio(store, job, spec, progress)
            yield document_name(audio_format), modified, FILE_MODE, ZIP_64, audio
            return
        for index in sorted(progress.done):
            audio = store.item_audio(job, progress.done[index])
            yield member_name(job, index, audio_format), modified, FILE_MODE, ZIP_64, _read(audio)

    return stream_zip(members())


def document_audio(store: JobStore, job: Job, spec: dict[str, Any], progress: Progress) -> Iterator[bytes]:
    """A finished document's chunks joined, in the job's format and rate (a chunk at a time in memory)."""
    out, fmt = spec["output"], AudioFormat(spec["output"]["format"])
    rate = next(iter(progress.done.values()))["sample_rate"] if progress.done else out["sample_rate"]
    encoder = codecs.encoder(fmt, rate, out["sample_rate"])
    seams = Crossfader(int(SEAM_SECONDS * rate))
    for position, index in enumerate(sorted(progress.done)):
        samples, _ = sf.read(store.item_audio(job, progress.done[index]), dtype="float32")
        if position:
            seams.next_segment()
        if data := encoder.encode(seams.feed(np.asarray(samples, np.float32))):
            yield data
    yield encoder.encode(seams.flush()) + encoder.finish()


def chunk_encoded(path: Path, fmt: AudioFormat, out_rate: int) -> bytes:
    """One of a document's chunks (kept as FLAC at the model's rate) as a file of the job's format and rate."""
    samples, rate = sf.read(path, dtype="float32")
    return codecs.encode_whole(fmt, samples, rate, out_rate)


def _read(path: Path, block: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while data := handle.read(block):
            yield data


def eta_s(job: Job, progress: Progress) -> float | None:
    """Seconds until the job is done at the pace of its items so far; None before the first is done."""
    finished = [facts["rendered_at"] for facts in progress.done.values() if "rendered_at" in facts]
    left = job.items_total - len(progress.done) - len(progress.failed)
    if not finished or left <= 0:
        return None if left > 0 else 0.0
    pace = (max(finished) - job.created) / len(finished)  # wall time per item, items in flight together included
    return round(left * pace, 1)
