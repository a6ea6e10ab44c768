"""The seed's API: ``POST /api/tts/stream`` (chunked audio) and ``POST /api/tts`` (one file); and
``POST /api/tts/with-timestamps`` (one file in JSON, with when each word is spoken)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import Response, StreamingResponse

from serve_app.audio.codecs import MEDIA_TYPES
from serve_app.config import AppConfig
from serve_app.ingress import audio_output
from serve_app.ingress.audio_output import Output
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.forms import form_body, model_parts
from serve_app.ingress.http_audio import read_upload, streaming_response, whole_response
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import TTSForm, TTSStreamForm, TTSTimestampsForm
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.timestamps import SegmentClock, json_with_audio
from serve_app.metrics import RequestTrace
from serve_app.model.types import SynthesisRequest
from serve_app.store.tenants import Principal
from serve_app.timing.aligner import Aligner

UPLOADS = ("prompt_audio", "reference_audio")  # read before the form is built into a request

Models = Annotated[ModelClient, Depends(model_client)]
Requests = Annotated[RequestBuilder, Depends(request_builder)]
router = APIRouter(tags=["tts"], responses=documented_errors(400, 401, 404, 413, 415, 422, 429, 503))
_AUDIO = {"content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}}


@router.post(
    "/api/tts/stream",
    response_class=StreamingResponse,
    responses={
        200: {**_AUDIO, "description": "Audio as it is generated; WAV: one header with sizes 0xFFFFFFFF, then PCM16."},
    },
    summary="Stream speech as it is generated",
    dependencies=[Depends(form_body)],
    openapi_extra=model_parts(TTSStreamForm),
)
async def tts_stream(
    form: Annotated[TTSStreamForm, Form(media_type="multipart/form-data")],
    models: Models,
    requests: Requests,
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
) -> StreamingResponse:
    return await streaming_response(models, *await _parsed(form, requests, trace, who))


@router.post(
    "/api/tts",
    response_class=Response,
    responses={200: {**_AUDIO, "description": "One complete file (WAV: PCM16 with exact sizes)."}},
    summary="Synthesize a whole utterance",
    dependencies=[Depends(form_body)],
    openapi_extra=model_parts(TTSForm),
)
async def tts(
    form: Annotated[TTSForm, Form(media_type="multipart/form-data")],
    models: Models,
    requests: Requests,
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
) -> Response:
    return await whole_response(models, *await _parsed(form, requests, trace, who))


@router.post(
    "/api/tts/with-timestamps",
    summary="Synthesize a whole utterance, with when each sentence and word is spoken",
    dependencies=[Depends(form_body)],
    openapi_extra=model_parts(TTSTimestampsForm),
)
async def tts_with_timestamps(
    form: Annotated[TTSTimestampsForm, Form(media_type="multipart/form-data")],
    models: Models,
    requests: Requests,
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
    heard_by: Annotated[Aligner | None, Depends(aligner)],
    config: Annotated[AppConfig, Depends(app_config)],
) -> Response:
    """``/api/tts``'s audio, base64 in the requested format, with each sentence's exact bounds (``segments``, in
    seconds and in samples of the audio returned) and its words' times (``words``; ``source`` says whether
    they were aligned or estimated), as ElevenLabs' with-timestamps route answers."""
    request, output = await _parsed(form, requests, trace, who)
    clock = SegmentClock(heard_by, form.timestamps, output.model.sample_rate, output.speed)
    most = config.limits.max_timestamped_audio_s
    audio, segments = await audio_output.whole_timed(models, request, output, clock, most)
    rate = output.sample_rate
    described = {
        "format": output.format.value,
        "sample_rate": rate,
        "source": "aligned" if segments and all(s.source == "aligned" for s in segments) else "estimated",
        "segments": [
            {**s.bounds_public(), "start_sample": round(s.start_s * rate), "end_sample": round(s.end_s * rate)}
            for s in segments
        ],
        "words": [word for s in segments for word in s.words_public()],
    }
    return Response(json_with_audio(audio, described), media_type="application/json")


async def _parsed(
    form: TTSStreamForm, requests: RequestBuilder, trace: RequestTrace, who: Principal
) -> tuple[SynthesisRequest, Output]:
    uploads = [await read_upload(getattr(form, field), requests.max_upload_bytes, field) for field in UPLOADS]
    return await requests.from_form(form, *uploads, trace, who)
