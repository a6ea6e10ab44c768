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
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from serve_app.audio.codecs import MEDIA_TYPES
from serve_app.config import AppConfig
from serve_app.ingress import audio_output, http_audio
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.openai_schemas import OPENAI_MODELS, OPENAI_VOICES, SpeechRequest, served_model
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.timestamps import SegmentClock, TimedSegment
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import shared_voice
from serve_app.timing.aligner import Aligner

router = APIRouter(prefix="/v1", tags=["openai"], responses=documented_errors(401, 429, 503, openai=True))

Models = Annotated[ModelClient, Depends(model_client)]
Requests = Annotated[RequestBuilder, Depends(request_builder)]

IGNORED_HEADER = "X-Ignored-Fields"


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
    request, output, ignored = await requests.from_openai(body, trace, who, config.openai)
    chunks = await models.chunks(request, output)
    clock = None
    if body.timestamps is not None:
        clock = SegmentClock(heard_by, body.timestamps, output.model.sample_rate, output.speed)
    audio = audio_output.encoded(output, chunks, clock)
    if body.stream_format == "audio":
        response = http_audio.streaming(audio, output)  # type: ignore[arg-type]
    else:
        events = _events(audio, output.trace)
        response = StreamingResponse(events, media_type="text/event-stream", headers=output.headers())
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)
    return response


async def _events(audio: AsyncIterator[bytes | TimedSegment], trace: RequestTrace) -> AsyncIterator[str]:
    """OpenAI's speech SSE: a delta event per piece of encoded audio (and, where asked, a timestamps event per
    sentence once its audio has gone), then a done event with the request's usage (OpenAI's tokens are its
    characters; ours beside them, as counted for the tenant)."""
    async for piece in audio:
        if isinstance(piece, TimedSegment):
            timed = {"type": "speech.audio.timestamps", **piece.bounds_public(), "words": piece.words_public()}
            yield f"event: speech.audio.timestamps\ndata: {json.dumps(timed, ensure_ascii=False)}\n\n"
        elif piece:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            yield f"event: speech.audio.delta\ndata: {json.dumps(delta)}\n\n"
    chars = trace.characters
    usage = {"input_tokens": chars, "output_tokens": 0, "total_tokens": chars, "characters": chars}
    done = {"type": "speech.audio.done", "usage": {**usage, "audio_seconds": round(trace.audio_seconds, 3)}}
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
