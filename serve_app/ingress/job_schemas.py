"""What ``POST /api/jobs`` takes: a document or a list of items, plus the defaults every item starts from.

An item's fields are the seed form's (``schemas.py``: voxcpm's knobs with the contract's ranges, the voice,
adapter and instructions), each absent one taken from the job's ``defaults``; the answer's encoding (format,
rate, speed, timestamps) is the job's, one for all its files. Sizes past the configured limits are refused by
the request builder (413 naming the field), which knows them; shapes and ranges here (400/422 naming it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.audio.codecs import AudioFormat
from serve_app.ingress.schemas import (
    INSTRUCTIONS_DESCRIPTION,
    LEXICONS_DESCRIPTION,
    MAX_INSTRUCTIONS_CHARS,
    MAX_NAME_CHARS,
    SPEED_DESCRIPTION,
    BadCaseRetry,
    LookupKey,
    NonBlankText,
    VoxCPMKnobs,
    optional_text,
)
from serve_app.ingress.timestamps import Mode as TimestampMode


class ItemSettings(VoxCPMKnobs, BadCaseRetry):
    """What one item (or, as ``defaults``, every item) is said with."""

    voice_id: LookupKey | None = Field(None, description="A saved voice, by id or name; kept with the job.")
    adapter: LookupKey | None = Field(None, description="A LoRA adapter of the model, by id or name.")
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS_CHARS, description=INSTRUCTIONS_DESCRIPTION)
    lexicons: list[LookupKey] | None = Field(
        None, max_length=10, description=f"{LEXICONS_DESCRIPTION} Applied when the job is submitted."
    )

    @field_validator("instructions")
    @classmethod
    def _blank_is_absent(cls, text: str | None) -> str | None:
        return optional_text(text)


class JobItem(ItemSettings):
    id: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="The client's own id for the item, echoed in the manifest; never a file name.",
    )
    text: NonBlankText = Field(description="What this item says.")

    def settings(self, defaults: ItemSettings) -> dict[str, Any]:
        """The item's settings: each one it gives, else the job's default."""
        given = self.model_dump(exclude_unset=True, exclude={"id", "text"})
        return {**defaults.model_dump(), **given}


class JobRequest(BaseModel):
    """``POST /api/jobs``: exactly one of ``document`` and ``items``."""

    model_config = ConfigDict(extra="forbid")

    document: NonBlankText | None = Field(
        None, description="A text to render as one audio file: plain text, or Markdown whose headings start chapters."
    )
    items: list[JobItem] | None = Field(None, min_length=1, description="Utterances to render, each its own file.")
    defaults: ItemSettings = Field(default_factory=ItemSettings, description="What items leave out.")
    model: LookupKey | None = Field(None, description="A served model; default: the configured one.")
    format: AudioFormat = Field(AudioFormat.WAV, description="Every file's format.")
    sample_rate: int | None = Field(None, ge=8000, le=96000, description="Every file's rate (default: the model's).")
    speed: float = Field(1.0, description=SPEED_DESCRIPTION)
    timestamps: TimestampMode | None = Field(None, description="Word or segment timestamps in the manifest.")

    @model_validator(mode="after")
    def _document_or_items(self) -> JobRequest:
        if (self.document is None) == (self.items is None):
            raise ValueError("give either `document` or `items`, not both and not neither")
        return self
