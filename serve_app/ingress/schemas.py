"""Request forms of the seed API, with the contract's ranges; FastAPI turns them into OpenAPI.

Both endpoints take multipart/form-data or application/x-www-form-urlencoded, as the seed's
``requests`` examples send both.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any

from fastapi import UploadFile
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from serve_app.audio.codecs import AudioFormat
from serve_app.audio.stretch import MAX_SPEED, MIN_SPEED
from serve_app.ingress.timestamps import Mode as TimestampMode
from serve_app.model.types import SynthesisRequest

MAX_LEN_LIMIT = 4096
MAX_SEED = 2**63 - 1  # what a torch.Generator takes
DEFAULTS = {field.name: field.default for field in dataclasses.fields(SynthesisRequest)}  # defined once, there
# Form fields about the answer's encoding rather than the synthesis itself.
OUTPUT_FIELDS = frozenset({"format", "sample_rate", "speed", "timestamps"})
SPEED_DESCRIPTION = (
    f"Speaking rate, {MIN_SPEED} to {MAX_SPEED} (1.0: as generated), by pitch-preserving time-stretch of the "
    "audio as it streams; other values are refused with 400."
)
# Form fields that say which voice to use; they become the request's prompt, reference or voice.
VOICE_FIELDS = frozenset({"prompt_audio", "prompt_text", "voice_id", "reference_audio"})
MAX_INSTRUCTIONS_CHARS = 1000
# Names, ids and the keys a request looks them up by (voice, adapter, model): refused (422 naming the field)
# past this before any lookup, so a lookup costs the same whatever was sent and no error echoes more.
MAX_NAME_CHARS = 100
LookupKey = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
INSTRUCTIONS_DESCRIPTION = (
    'VoxCPM2 models: a plain-language description of the voice or style ("a warm, slow female voice"), which '
    "voxcpm reads in parentheses before the text. Alone it designs a voice; with reference_audio, a saved voice "
    "or prompt_audio without prompt_text it styles that voice. Not with prompt_text (voxcpm cannot steer a "
    "continuation). Every sentence of a long text keeps it."
)


# C0/C1 control characters other than tab and line breaks: invisible, unspeakable, and a way to
# smuggle terminal escapes into logs.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _speakable(text: str) -> str:
    text = CONTROL_CHARACTERS.sub("", text)
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return text


NonBlankText = Annotated[str, AfterValidator(_speakable)]


def optional_text(text: str | None) -> str | None:
    """An optional text field (a transcript, instructions, a description) as spoken: without control characters
    and trimmed; blank counts as absent."""
    text = CONTROL_CHARACTERS.sub("", text or "").strip()
    return text or None


class VoxCPMKnobs(BaseModel):
    """voxcpm's generation settings with the contract's ranges: the seed's forms and the OpenAI body share them."""

    model_config = ConfigDict(extra="forbid")

    cfg_value: float = Field(DEFAULTS["cfg_value"], ge=1.0, le=5.0, description="Guidance strength.")
    inference_timesteps: int = Field(
        DEFAULTS["inference_timesteps"], ge=1, le=100, description="Diffusion steps per audio patch."
    )
    min_len: int = Field(
        DEFAULTS["min_len"], ge=1, le=MAX_LEN_LIMIT, description="Minimum length, in generation steps."
    )
    max_len: int = Field(
        DEFAULTS["max_len"],
        ge=1,
        le=MAX_LEN_LIMIT,
        description="Maximum length, in generation steps for the whole text (>= min_len).",
    )
    normalize: bool = Field(
        DEFAULTS["normalize"], description="Normalize numbers, dates and symbols in the text first."
    )
    seed: int | None = Field(
        DEFAULTS["seed"],
        ge=0,
        le=MAX_SEED,
        description="Seed of the diffusion noise: the same request with the same seed gives the same audio, alone or "
        "in any batch (bit for bit where the engine is exact: batch_invariant with a bfloat16 model; otherwise "
        "within its tolerance). None (default): a new seed each time.",
    )

    @field_validator("max_len")
    @classmethod
    def _max_len_covers_min_len(cls, max_len: int, info: ValidationInfo) -> int:
        min_len = info.data.get("min_len")
        if min_len is not None and max_len < min_len:
            raise ValueError(f"max_len ({max_len}) must be >= min_len ({min_len})")
        return max_len

    def lexicon_names(self) -> list[str]:
        """The lexicons named, for the forms' comma-separated field and OpenAI's list alike."""
        given = getattr(self, "lexicons", None) or ()
        names = given.split(",") if isinstance(given, str) else given
        return [name.strip() for name in names if name.strip()]

    def knobs(self) -> dict[str, Any]:
        """These settings by voxcpm's (and SynthesisRequest's) names."""
        return self.model_dump(include=set(VoxCPMKnobs.model_fields))


LEXICONS_DESCRIPTION = (
    "Saved pronunciation lexicons (POST /api/lexicons) by id or name, up to limits.max_request_lexicons (3): "
    "the first that has a word says it."
)


class TTSStreamForm(VoxCPMKnobs):
    """Fields of ``POST /api/tts/stream``; names and defaults are the seed's."""

    text: NonBlankText | None = Field(
        None,
        description="Text to synthesize (non-empty after trimming; at most the configured length; may be SSML). "
        "Required unless `turns` is given.",
        examples=["你好，这是流式语音合成。"],
    )
    turns: str | None = Field(
        None,
        description='Instead of text, a dialogue: JSON [{"voice_id": "host", "text": "...", "pause_after": 0.3}, '
        "...]: each turn in its saved voice, in order, in one answer (with a seed, each turn as its voice alone "
        "says it); pause_after: seconds of silence after the turn (default 0.3).",
    )
    lexicons: str | None = Field(None, max_length=1000, description=f"{LEXICONS_DESCRIPTION} Comma-separated.")
    prompt_audio: UploadFile | None = Field(
        None, description="Reference audio for voice cloning, any format libsndfile reads (WAV, FLAC, OGG, MP3)."
    )
    prompt_text: str | None = Field(
        None,
        description="Transcript of prompt_audio; required with it on VoxCPM 0.5B/1.5 "
        "(VoxCPM2 can clone from audio alone).",
        examples=["参考音频的文本"],
    )
    reference_audio: UploadFile | None = Field(
        None,
        description="VoxCPM2 models: an isolated reference recording to clone (no transcript needed), alone or "
        "next to prompt_audio + prompt_text (a continuation prompt: voxcpm's ref_continuation mode).",
    )
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS_CHARS, description=INSTRUCTIONS_DESCRIPTION)
    model: LookupKey | None = Field(None, description="A served model (GET /v1/models); default: the configured one.")
    voice_id: LookupKey | None = Field(
        None, description="A saved voice (POST /api/voices) instead of prompt_audio + prompt_text."
    )
    adapter: LookupKey | None = Field(
        None,
        description="A LoRA adapter of the model (POST /api/adapters, or declared in its config), by id or name; "
        "default: the voice's, if it carries one, else the base model.",
    )
    denoise: bool = Field(DEFAULTS["denoise"], description="Denoise the reference audio (needs the denoiser loaded).")
    format: AudioFormat = Field(
        AudioFormat.WAV,
        description="Output format: wav (streamed with an unknown-length header), pcm (raw s16le), flac, mp3, "
        "opus (Ogg), aac (ADTS), or ulaw / alaw (raw G.711, one byte a sample, 8 kHz unless sample_rate says "
        "otherwise: what phone lines carry).",
    )
    sample_rate: int | None = Field(
        None, ge=8000, le=96000, description="Resample the output to this rate (default: the model's own)."
    )
    speed: float = Field(1.0, description=SPEED_DESCRIPTION)

    @field_validator("prompt_text", "instructions")
    @classmethod
    def _blank_is_absent(cls, text: str | None) -> str | None:
        return optional_text(text)


class BadCaseRetry(BaseModel):
    """voxcpm's bad-case retry: where audio is generated whole (``/api/tts``, job items), not streamed."""

    retry_badcase: bool = Field(
        DEFAULTS["retry_badcase"], description="Regenerate when the audio is implausibly long for the text."
    )
    retry_badcase_max_times: int = Field(DEFAULTS["retry_badcase_max_times"], ge=1, le=10)
    retry_badcase_ratio_threshold: float = Field(
        DEFAULTS["retry_badcase_ratio_threshold"],
        gt=0.0,
        le=100.0,
        description="Audio/text length ratio that counts as a bad case.",
    )


class TTSForm(TTSStreamForm, BadCaseRetry):
    """Fields of ``POST /api/tts``: the streaming ones plus voxcpm's bad-case retry."""


class TTSTimestampsForm(TTSForm):
    """Fields of ``POST /api/tts/with-timestamps``: ``/api/tts``'s, and which timestamps."""

    timestamps: TimestampMode = Field(
        "word",
        description="word: each word's times (aligned where an aligner is configured, else estimated from its "
        "sentence's exact bounds); segment: each sentence's bounds only.",
    )
