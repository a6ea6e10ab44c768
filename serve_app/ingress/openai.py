"""OpenAI-compatible speech: ``POST /v1/audio/speech``, the model and voice listings clients ask for.

Clients written for OpenAI's API (its official SDKs, pipecat, livekit-agents, Open WebUI, Home
Assistant) work by changing their base URL: the JSON body, the formats, raw audio streaming and
``stream_format="sse"`` events (``speech.audio.delta`` with base64 audio, then ``speech.audio.done``;
ours besides, with ``timestamps``: ``speech.audio.timestamps`` per sentence), OpenAI's error shape, and
the listings Kokoro-FastAPI made the convention for OpenAI-compatible servers (``/v1/audio/models``,
``/v1/audio/voices``). VoxCPM's own knobs are optional extra fields.

Fields a model cannot honour: such clients send them whether or not the server can use them
(Home Assistant sends ``instructions`` with every request, the string "None" when it has none), so
here they are ignored and named in the ``X-Ignored-Fields`` header, unless the deployment sets
``openai.strict``. The native ``/api`` routes, whose callers are written for this service, refuse them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, field_validator

from serve_app.audio.codecs import MEDIA_TYPES, AudioFormat
from serve_app.config import AppConfig, OpenAIRouteConfig
from serve_app.errors import BadRequest, NotFound
from serve_app.ingress import audio_output
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.http_audio import streaming_response
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import (
    MAX_INSTRUCTIONS_CHARS,
    SPEED_DESCRIPTION,
    LookupKey,
    NonBlankText,
    VoxCPMKnobs,
)
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.timestamps import Mode as TimestampMode
from serve_app.ingress.timestamps import SegmentClock, TimedSegment
from serve_app.metrics import RequestTrace
from serve_app.model import capabilities
from serve_app.model.types import ModelInfo, SynthesisRequest
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import Voice, shared_voice
from serve_app.timing.aligner import Aligner

router = APIRouter(prefix="/v1", tags=["openai"], responses=documented_errors(401, 429, 503, openai=True))

Models = Annotated[ModelClient, Depends(model_client)]
Requests = Annotated[RequestBuilder, Depends(request_builder)]

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
IGNORED_HEADER = "X-Ignored-Fields"


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


async def _voice(name: str, requests: RequestBuilder, config: OpenAIRouteConfig, who: Principal) -> Voice | None:
    """The saved voice to speak with: a mapped OpenAI name's (a shared voice: no tenant can change what a
    configured name speaks with), none for an unmapped one (the model's default), else the caller's by name."""
    key = name.strip().casefold()
    if key in config.voices:
        try:
            return await asyncio.to_thread(requests.voices.find_shared, config.voices[key], "voice")
        except NotFound:
            raise NotFound(
                f"voice {name!r} is mapped to the shared voice {config.voices[key]!r}, which does not exist", "voice"
            ) from None
    return None if key in OPENAI_VOICES else await requests.voice(name, "voice", who)


async def _instructions(
    body: SpeechRequest, info: ModelInfo, strict: bool, models: ModelClient
) -> tuple[str | None, list[str]]:
    """The instructions the model gets, and the fields ignored because it cannot follow them."""
    fields = {"instructions": body.instructions}
    if capabilities.unsupported(info, fields) is None:
        return body.instructions, []
    if strict:
        await models.require(info.name, fields)
    return None, ["instructions"]


@router.post(
    "/audio/speech",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                **{media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
                "text/event-stream": {"schema": {"type": "string"}},
            },
            "description": "Audio as it is generated, or SSE events with stream_format=sse. X-Ignored-Fields names "
            "fields the model could not honour.",
        },
        **documented_errors(400, 404, 413, 422, openai=True),
    },
    summary="OpenAI-compatible text to speech",
)
async def speech(
    body: SpeechRequest,
    models: Models,
    requests: Requests,
    config: Annotated[AppConfig, Depends(app_config)],
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
    heard_by: Annotated[Aligner | None, Depends(aligner)],
) -> StreamingResponse:
    if body.timestamps is not None and body.stream_format != "sse":
        raise BadRequest("timestamps come as events of an SSE stream: set stream_format to sse", "timestamps")
    model = served_model(body.model, models)
    requests.check_text_length(body.input, "input")
    default_rate = OPENAI_PCM_RATE if body.response_format is AudioFormat.PCM else None
    rate = body.sample_rate or default_rate
    output = await audio_output.output(models, body.response_format, rate, model, trace, body.speed)
    instructions, ignored = await _instructions(body, output.model, config.openai.strict, models)
    voice = await _voice(body.voice_name, requests, config.openai, who)
    adapter = await requests.adapter(None, voice, model, who)
    request = SynthesisRequest(
        text=body.input,
        voice=voice,
        adapter=adapter,
        instructions=instructions,
        segments=body.timestamps is not None,
        **trace.ids,
        **body.knobs(),
    )
    if body.stream_format == "audio":
        response = await streaming_response(models, request, output)
    else:
        clock = None
        if body.timestamps is not None:
            clock = SegmentClock(heard_by, body.timestamps, output.model.sample_rate, output.speed)
        audio = await audio_output.encoded_stream(models, request, output, clock)
        response = StreamingResponse(
            _events(audio, len(body.input)), media_type="text/event-stream", headers=output.headers()
        )
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)
    return response


async def _events(audio: AsyncIterator[bytes | TimedSegment], input_chars: int) -> AsyncIterator[str]:
    """OpenAI's speech SSE: a delta event per piece of encoded audio (and, where asked, a timestamps event per
    sentence once its audio has gone), then a done event."""
    async for piece in audio:
        if isinstance(piece, TimedSegment):
            timed = {"type": "speech.audio.timestamps", **piece.bounds_public(), "words": piece.words_public()}
            yield f"event: speech.audio.timestamps\ndata: {json.dumps(timed, ensure_ascii=False)}\n\n"
        elif piece:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            yield f"event: speech.audio.delta\ndata: {json.dumps(delta)}\n\n"
    done = {
        "type": "speech.audio.done",
        "usage": {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars},
    }
    yield f"event: speech.audio.done\ndata: {json.dumps(done)}\n\n"


@router.get("/models", summary="The models this service speaks with")
async def list_models(models: Models) -> dict:
    return {"object": "list", "data": [_model_entry(await models.model_info(name)) for name in models.model_names]}


@router.get(
    "/models/{model_id}",
    summary="One model (OpenAI's ids name the default one)",
    responses=documented_errors(404, 422, openai=True),
)
async def model(model_id: str, models: Models) -> dict:
    entry = _model_entry(await models.model_info(served_model(model_id, models)))
    return entry if entry["id"] == model_id else {**entry, "id": model_id, "alias_of": entry["id"]}


@router.get("/audio/models", summary="Speech models, as Open WebUI and Kokoro-FastAPI list them")
async def audio_models(models: Models) -> dict:
    served = [{"id": name, "name": name} for name in models.model_names]
    aliases = [{"id": alias, "name": f"{alias} (= {models.default_model})"} for alias in OPENAI_MODELS]
    return {"models": served + aliases}


@router.get("/audio/voices", summary="OpenAI's voice names (with what each speaks with) and the saved voices")
async def audio_voices(
    requests: Requests, config: Annotated[AppConfig, Depends(app_config)], who: Annotated[Principal, Depends(caller)]
) -> dict:
    """Kokoro-FastAPI's shape, ``{"voices": [{"id", "name"}, ...]}``, which Open WebUI reads to fill its
    voice menu; each entry also says what it is."""
    saved = await asyncio.to_thread(requests.voices.list, who)
    mapped = config.openai.voices
    names = [*OPENAI_VOICES, *(name for name in mapped if name not in OPENAI_VOICES)]
    aliases = []
    for name in names:
        target = mapped.get(name)
        voice = None if target is None else shared_voice(target, saved)  # what it speaks with
        aliases.append(
            {
                "id": name,
                "name": name if voice is None else f"{name} ({voice.name})",
                "kind": "openai",
                "maps_to": target,
                "voice_id": None if voice is None else voice.voice_id,
            }
        )
    listed = [{"id": v.voice_id, "name": v.name, "kind": "saved", "seconds": v.seconds} for v in saved]
    return {"voices": aliases + listed}


def _model_entry(info: ModelInfo) -> dict:
    return {
        "id": info.name,
        "object": "model",
        "created": 0,
        "owned_by": "voxcpm-serve",
        "architecture": info.architecture,
        "sample_rate": info.sample_rate,
        "synthetic": info.synthetic,  # random weights: speaks noise (serve_app/model/weights.py)
        "capabilities": list(info.capabilities),  # what beyond plain speech it takes (instructions, ...)
        "lora": info.lora,  # the LoRA shape of the adapters it serves (POST /api/adapters); None: none
    }
