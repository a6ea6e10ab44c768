"""The messages a client sends on ``/api/tts/ws``, validated by pydantic like the HTTP bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from serve_app.audio.codecs import AudioFormat
from serve_app.errors import BadRequest
from serve_app.ingress.error_responses import validation_message
from serve_app.ingress.schemas import (
    CONTROL_CHARACTERS,
    INSTRUCTIONS_DESCRIPTION,
    LEXICONS_DESCRIPTION,
    MAX_INSTRUCTIONS_CHARS,
    LookupKey,
    VoxCPMKnobs,
)

DEFAULT_CONTEXT = "0"
ContextId = Annotated[str, Field(min_length=1, max_length=64)]
# init.encoding -> the audio format of the binary frames
ENCODINGS = {"pcm_s16le": AudioFormat.PCM, "ulaw": AudioFormat.ULAW, "alaw": AudioFormat.ALAW}


class Init(VoxCPMKnobs):
    """The first message: the voice and settings of every context of the socket."""

    type: Literal["init"]
    voice_id: LookupKey | None = Field(None, description="A saved voice; none: the first sentence's voice is kept.")
    adapter: LookupKey | None = Field(
        None, description="A LoRA adapter of the model, by id or name (default: the voice's)."
    )
    model: LookupKey | None = None
    sample_rate: int | None = Field(
        None, ge=8000, le=96000, description="Output rate (default: the model's; 8000 for ulaw and alaw)."
    )
    encoding: Literal["pcm_s16le", "ulaw", "alaw"] = Field(
        "pcm_s16le",
        description="The binary frames: PCM s16le, or G.711 mu-law / A-law (one byte a sample), as phone lines carry.",
    )
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS_CHARS, description=INSTRUCTIONS_DESCRIPTION)
    max_wait_ms: int = Field(500, ge=0, le=10000, description="Speak buffered words after this long without a stop.")
    lexicons: list[LookupKey] | None = Field(None, max_length=10, description=LEXICONS_DESCRIPTION)
    timestamps: Literal["word", "segment"] | None = Field(
        None,
        description="A `timestamps` message per segment, before its last audio frame: its words' times (aligned "
        "where an aligner is configured, else estimated), or the segment's own bounds.",
    )

    @property
    def audio_format(self) -> AudioFormat:
        return ENCODINGS[self.encoding]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Text(_Message):
    type: Literal["text"]
    context_id: ContextId = DEFAULT_CONTEXT
    text: str

    @field_validator("text")
    @classmethod
    def _printable(cls, text: str) -> str:
        return CONTROL_CHARACTERS.sub("", text)


class Flush(_Message):
    type: Literal["flush"]
    context_id: ContextId = DEFAULT_CONTEXT


class End(_Message):
    type: Literal["end"]
    context_id: ContextId = DEFAULT_CONTEXT


class Cancel(_Message):
    type: Literal["cancel"]
    context_id: ContextId = DEFAULT_CONTEXT


class Close(_Message):
    type: Literal["close"]


Message = Annotated[Init | Text | Flush | End | Cancel | Close, Field(discriminator="type")]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def parse(data: str) -> Message:
    """One client message, or a BadRequest naming what is wrong with it."""
    try:
        return _MESSAGE.validate_json(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        kind, location = error["type"], [str(part) for part in error.get("loc", ())]
        if kind == "json_invalid":
            raise BadRequest(f"not JSON: {error['msg']}") from None
        if kind in ("union_tag_not_found", "model_attributes_type", "model_type"):
            raise BadRequest("a message is a JSON object with a `type`", "type") from None
        if kind == "union_tag_invalid":
            raise BadRequest(f"unknown message type; known: {error['ctx']['expected_tags']}", "type") from None
        field = location[1] if len(location) > 1 else None  # after the message's type
        raise BadRequest(validation_message(error, field), field) from None
