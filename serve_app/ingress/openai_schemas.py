"""OpenAI's speech request and names (its model ids, its voices, its raw PCM rate), as ``/v1/audio/speech`` takes
them: read by the request builder, which maps them onto the service's models and saved voices, and by the
OpenAI routes' listings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, field_validator

from serve_app.audio.codecs import AudioFormat
from serve_app.ingress.schemas import (
    LEXICONS_DESCRIPTION,
    MAX_INSTRUCTIONS_CHARS,
    SPEED_DESCRIPTION,
    LookupKey,
    NonBlankText,
    VoxCPMKnobs,
)
from serve_app.ingress.timestamps import Mode as TimestampMode

if TYPE_CHECKING:
    from serve_app.ingress.model_client import ModelClient

# OpenAI's speech model ids, each also with a dated suffix (gpt-4o-mini-tts-2025-12-15): all name the
# default model, so that clients keep their own default.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
OPENAI_PCM_RATE = 24000  # OpenAI's raw PCM is 24 kHz; clients play it at that rate
# What clients send for "no instructions": Home Assistant's unset option arrives as the string "None".
ABSENT_TEXT = frozenset({"", "none"})


def is_openai_model(name: str) -> bool:
    name = name.casefold()
    return any(name == family or name.startswith(family + "-") for family in OPENAI_MODELS)


def served_model(name: str, models: ModelClient) -> str:
    """The served model a request's ``model`` names: its own name first, then OpenAI's ids as the default."""
    return models.resolve(None if name not in models.model_names and is_openai_model(name) else name)


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form of ``voice``."""

    id: LookupKey = Field(min_length=1, description="A saved voice's id or name, or an OpenAI voice name.")


class SpeechRequest(VoxCPMKnobs):
    """OpenAI's speech request, plus VoxCPM's knobs."""

    model: LookupKey = Field(
        description="A served model (GET /v1/models), or one of OpenAI's (tts-1, tts-1-hd, gpt-4o-mini-tts, "
        "also with a date suffix) for the default one."
    )
    input: NonBlankText = Field(description="Text to synthesize.", examples=["你好，这是流式语音合成。"])
    voice: LookupKey | VoiceRef = Field(
        description="A saved voice's id or name (POST /api/voices), or an OpenAI voice name (any case), which "
        "speaks with the saved voice the deployment maps it to (`openai.voices`), else the model's default; "
        'also as OpenAI\'s object form {"id": ...}. GET /v1/audio/voices lists them.',
        examples=["alloy"],
    )
    response_format: AudioFormat = AudioFormat.MP3
    speed: float = Field(1.0, description=SPEED_DESCRIPTION)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(
        None,
        max_length=MAX_INSTRUCTIONS_CHARS,
        description="VoxCPM2 models: a description of the voice or style. Other models cannot follow it: it is "
        'ignored and named in the X-Ignored-Fields header (400 when the deployment is strict). "" and "None" '
        "count as absent.",
    )
    sample_rate: int | None = Field(None, ge=8000, le=96000, description="Output rate (pcm defaults to 24 kHz).")
    lexicons: list[LookupKey] | None = Field(None, max_length=10, description=LEXICONS_DESCRIPTION)
    timestamps: TimestampMode | None = Field(
        None,
        description="With stream_format sse: a speech.audio.timestamps event per sentence, after its audio: its "
        "words' times (aligned where an aligner is configured, else estimated), or the sentence's own bounds.",
    )

    @field_validator("instructions")
    @classmethod
    def _absent_when_blank(cls, instructions: str | None) -> str | None:
        return None if instructions is None or instructions.strip().casefold() in ABSENT_TEXT else instructions

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id
