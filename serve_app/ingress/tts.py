"""The seed's API: ``POST /api/tts/stream`` (chunked audio) and ``POST /api/tts`` (one file)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import Response, StreamingResponse

from serve_app.audio.codecs import MEDIA_TYPES
from serve_app.ingress.dependencies import caller, request_trace, synthesis_service
from serve_app.ingress.errors import documented_errors
from serve_app.ingress.forms import form_body
from serve_app.ingress.http_audio import read_upload, streaming_response, whole_response
from serve_app.ingress.schemas import TTSForm, TTSStreamForm
from serve_app.ingress.synthesis import Output, SynthesisService
from serve_app.metrics import RequestTrace
from serve_app.model.types import SynthesisRequest
from serve_app.tenants import Principal

UPLOADS = ("prompt_audio", "reference_audio")  # read before the service sees the form

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
)
async def tts_stream(
    form: Annotated[TTSStreamForm, Form(media_type="multipart/form-data")],
    service: Annotated[SynthesisService, Depends(synthesis_service)],
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
) -> StreamingResponse:
    return await streaming_response(service, *await _parsed(form, service, trace, who))


@router.post(
    "/api/tts",
    response_class=Response,
    responses={200: {**_AUDIO, "description": "One complete file (WAV: PCM16 with exact sizes)."}},
    summary="Synthesize a whole utterance",
    dependencies=[Depends(form_body)],
)
async def tts(
    form: Annotated[TTSForm, Form(media_type="multipart/form-data")],
    service: Annotated[SynthesisService, Depends(synthesis_service)],
    trace: Annotated[RequestTrace, Depends(request_trace)],
    who: Annotated[Principal, Depends(caller)],
) -> Response:
    return await whole_response(service, *await _parsed(form, service, trace, who))


async def _parsed(
    form: TTSStreamForm, service: SynthesisService, trace: RequestTrace, who: Principal
) -> tuple[SynthesisRequest, Output]:
    uploads = [await read_upload(getattr(form, field), service.max_upload_bytes, field) for field in UPLOADS]
    return await service.from_form(form, *uploads, trace, who)
