"""OpenAI-compatible speech: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Clients written for OpenAI's API (its official Python client included) work unchanged: the
JSON body, the formats, raw audio streaming and ``stream_format="sse"`` events
(``speech.audio.delta`` with base64 audio, then ``speech.audio.done``). VoxCPM's own knobs are
optional extra fields.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import Field

from serve_app.audio.codecs import MEDIA_TYPES, AudioFormat
from serve_app.errors import BadRequest
from serve_app.ingress.dependencies import request_trace, synthesis_service
from serve_app.ingress.http_audio import streaming_response
from serve_app.ingress.schemas import NonBlankText, VoxCPMKnobs
from serve_app.ingress.synthesis import SynthesisService
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo, SynthesisRequest
from serve_app.voices import Voice

router = APIRouter(prefix="/v1", tags=["openai"])

# OpenAI's model and voice names, accepted so that existing clients work: they select the served
# model and its default voice.
OPENAI_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"}
)
OPENAI_PCM_RATE = 24000  # OpenAI's raw PCM is 24 kHz; clients play it at that rate


class SpeechRequest(VoxCPMKnobs):
    """OpenAI's speech request, plus VoxCPM's knobs."""

    model: str = Field(
        description="A served model (GET /v1/models), or tts-1 / tts-1-hd / gpt-4o-mini-tts for the default one."
    )
    input: NonBlankText = Field(description="Text to synthesize.", examples=["你好，这是流式语音合成。"])
    voice: str = Field(
        description="A saved voice's id or name (POST /api/voices), or one of OpenAI's voice names, which "
        "select the model's default voice.",
        examples=["alloy"],
    )
    response_format: AudioFormat = AudioFormat.MP3
    speed: float = Field(
        1.0,
        description="Only 1.0: VoxCPM has no speaking-rate control, and this service "
        "does not time-stretch; other values are refused rather than ignored.",
    )
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(None, description="Not supported by VoxCPM; refused when not empty.")
    sample_rate: int | None = Field(None, ge=8000, le=96000, description="Output rate (pcm defaults to 24 kHz).")


async def _checked(body: SpeechRequest, service: SynthesisService) -> tuple[str, Voice | None]:
    """Refuse what cannot be honoured; the model, and the saved voice to speak with if any."""
    model = service.resolve(None if body.model in OPENAI_MODELS else body.model)
    if body.speed != 1.0:
        raise BadRequest("speed: only 1.0 is supported (VoxCPM has no speaking-rate control)", "speed")
    if body.instructions and body.instructions.strip():
        raise BadRequest("instructions are not supported by VoxCPM", "instructions")
    service.check_text_length(body.input, "input")
    return model, None if body.voice in OPENAI_VOICES else await service.voice(body.voice, "voice")


@router.post(
    "/audio/speech",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                **{media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
                "text/event-stream": {"schema": {"type": "string"}},
            },
            "description": "Audio as it is generated, or SSE events with stream_format=sse.",
        }
    },
    summary="OpenAI-compatible text to speech",
)
async def speech(
    body: SpeechRequest,
    service: Annotated[SynthesisService, Depends(synthesis_service)],
    trace: Annotated[RequestTrace, Depends(request_trace)],
) -> StreamingResponse:
    model, voice = await _checked(body, service)
    default_rate = OPENAI_PCM_RATE if body.response_format is AudioFormat.PCM else None
    output = await service.output(body.response_format, body.sample_rate or default_rate, model, trace)
    request = SynthesisRequest(text=body.input, voice=voice, **trace.ids, **body.knobs())
    if body.stream_format == "audio":
        return await streaming_response(service, request, output)
    audio = await service.encoded_stream(request, output)
    return StreamingResponse(_events(audio, len(body.input)), media_type="text/event-stream", headers=output.headers())


async def _events(audio: AsyncIterator[bytes], input_chars: int) -> AsyncIterator[str]:
    """OpenAI's speech SSE: a delta event per piece of encoded audio, then a done event."""
    async for piece in audio:
        if piece:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            yield f"event: speech.audio.delta\ndata: {json.dumps(delta)}\n\n"
    done = {
        "type": "speech.audio.done",
        "usage": {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars},
    }
    yield f"event: speech.audio.done\ndata: {json.dumps(done)}\n\n"


@router.get("/models", summary="The models this service speaks with")
async def models(service: Annotated[SynthesisService, Depends(synthesis_service)]) -> dict:
    return {"object": "list", "data": [_model_entry(await service.model_info(name)) for name in service.model_names]}


def _model_entry(info: ModelInfo) -> dict:
    return {
        "id": info.name,
        "object": "model",
        "created": 0,
        "owned_by": "voxcpm-serve",
        "architecture": info.architecture,
        "sample_rate": info.sample_rate,
    }
