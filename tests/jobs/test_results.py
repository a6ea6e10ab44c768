"""A job's results read back from the store: the manifest (member names the service's, a document's times from its
start), the ZIP streamed as it is read, and a document's chunks joined into one file with the service's seams."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.audio.seams import SEAM_SECONDS
from serve_app.jobs import results
from serve_app.store.job_store import JobStore
from serve_app.store.tenants import Principal

ALICE = Principal("alice", False, "a")
RATE = 16000
OUTPUT = {"format": "wav", "sample_rate": RATE, "speed": 1.0, "timestamps": "word"}


def flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def segment(text: str, start_s: float, end_s: float) -> dict:
    return {"index": 0, "text": text, "start_s": start_s, "end_s": end_s}


def test_items_zip_names_files_by_index_and_streams(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    items = [{"id": f"../{n}", "text": f"word {n}", "settings": {}} for n in range(12)]
    job, _ = store.create(ALICE, "items", {"output": OUTPUT, "items": items}, 12, None)
    progress_facts = {"seconds": 0.5, "sample_rate": RATE, "segments": [segment("word", 0.0, 0.5)]}
    for index in (0, 11, 5):
        store.item_done(job, index, f"audio {index}".encode(), "wav", progress_facts)
    spec, progress = store.spec(job), store.progress(job)
    pieces = list(results.zipped(store, job, spec, progress))
    assert len(pieces) > 1  # produced as it is read, not one buffer
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert archive.namelist() == ["manifest.jsonl", "00.wav", "05.wav", "11.wav"]  # sorted, never the client's id
    assert archive.read("11.wav") == b"audio 11"
    lines = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    assert [(line["index"], line["id"], line["file"]) for line in lines] == [
        (0, "../0", "00.wav"),
        (5, "../5", "05.wav"),
        (11, "../11", "11.wav"),
    ]
    assert lines[0]["words"] == [{"word": "word", "start_s": 0.0, "end_s": 0.5}] and lines[0]["source"] == "estimated"


def test_a_document_is_its_chunks_joined_and_timed_from_its_start(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    chunks = [{"chapter": n // 2, "spans": [{"text": f"chunk {n}.", "pause_after": 0.0}]} for n in range(3)]
    spec = {"output": {**OUTPUT, "timestamps": "segment"}, "document": {"settings": {}, "chunks": chunks}}
    job, _ = store.create(ALICE, "document", spec, 3, None)
    tone = [np.full(RATE // 2, 0.1 * (n + 1), np.float32) for n in range(3)]
    for index, samples in enumerate(tone):
        facts = {"seconds": 0.5, "sample_rate": RATE, "segments": [segment(f"chunk {index}.", 0.0, 0.5)]}
        store.item_done(job, index, flac(samples), "flac", facts)
    progress = store.progress(job)
    wav = b"".join(results.document_audio(store, job, spec, progress))
    audio = np.frombuffer(wav[44:], "<i2") / 32768
    seam = int(SEAM_SECONDS * RATE)
    assert len(audio) == 3 * RATE // 2 - 2 * seam  # each join overlaps the chunks by the crossfade
    assert np.allclose(audio[: RATE // 2 - seam], 0.1, atol=1e-4) and np.allclose(audio[-RATE // 4 :], 0.3, atol=1e-4)
    lines = list(results.manifest(job, store.spec(job), progress))
    assert [line["start_s"] for line in lines] == [0.0, 0.49, 0.98]
    assert lines[2]["segments"][0]["start_s"] == 0.98 and lines[2]["chapter"] == 1


def test_a_cancelled_document_without_its_first_chunk_is_what_is_done(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    chunks = [{"chapter": 0, "spans": [{"text": f"chunk {n}.", "pause_after": 0.0}]} for n in range(2)]
    spec = {"output": OUTPUT, "document": {"settings": {}, "chunks": chunks}}
    job, _ = store.create(ALICE, "document", spec, 2, None)
    facts = {"seconds": 0.5, "sample_rate": RATE, "segments": [segment("chunk 1.", 0.0, 0.5)]}
    store.item_done(job, 1, flac(np.full(RATE // 2, 0.2, np.float32)), "flac", facts)
    store.cancel(job)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(results.zipped(store, job, spec, store.progress(job)))))
    assert len(archive.read("document.wav")) == 44 + 2 * RATE // 2


def test_eta_follows_the_pace_so_far(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job, _ = store.create(ALICE, "items", {"output": OUTPUT, "items": []}, 4, None)
    assert results.eta_s(job, store.progress(job)) is None
    store.item_done(job, 0, b"x", "wav", {"seconds": 1, "rendered_at": job.created + 2})
    assert results.eta_s(job, store.progress(job)) == 6.0  # 3 left at 2 s each
