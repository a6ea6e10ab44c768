"""Background jobs: ``jobs:`` of the Serve config's ``args:`` block (docs/jobs.md)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from serve_app.config.base import Strict


class JobPauses(Strict):
    """Seconds of silence a document's audio gets after each unit."""

    sentence_s: float = Field(0.0, ge=0, le=10, description="After every sentence, beyond the model's own.")
    paragraph_s: float = Field(0.6, ge=0, le=10, description="After a paragraph's last sentence, and a heading.")
    chapter_s: float = Field(1.5, ge=0, le=10, description="After a chapter's last sentence.")


class JobsConfig(Strict):
    """What a job may ask for and how the service renders it."""

    max_document_chars: PositiveInt = Field(1_000_000, description="A document's length: 413 naming `document`.")
    max_items: PositiveInt = Field(10_000, description="Items in one job: 413 naming `items`.")
    max_body_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="The largest `POST /api/jobs` body (JSON); the item texts are each capped by "
        "limits.max_text_chars as a request's.",
    )
    chunk_chars: int = Field(
        600,
        ge=1,
        le=5000,
        description="A document is rendered in chunks of whole sentences up to this many characters (at least one "
        "sentence each), each anchored on the job's voice.",
    )
    pauses: JobPauses = JobPauses()
    continuation: bool = Field(
        False,
        description="VoxCPM2 documents (without instructions): each chunk after the first also continues the one "
        "before it (its last sentence's audio and text as a continuation prompt, the voice as an isolated "
        "reference beside it), for prosody across the seams; a document's chunks then render one after another. "
        "Decided when a job is submitted. Off: not yet shown not to drift over an hour on real weights.",
    )
    replica_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The share of each model replica's batch (max_batch_size; 1 for engine: voxcpm) the job runner "
        "keeps in flight, at least one request per replica: the rest of the replica's slots stay free for live "
        "requests.",
    )
    retention_s: float = Field(
        7 * 24 * 3600, gt=0, description="A job's text and results are removed this long after it was submitted."
    )
    attempts: PositiveInt = Field(
        3,
        description="Tries of an item whose model replica failed (not one the model refused: that fails at once) "
        "before it is reported failed.",
    )
