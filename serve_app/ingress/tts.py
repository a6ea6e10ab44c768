"""The seed's API: ``POST /api/tts/stream`` (chunked WAV) and ``POST /api/tts`` (one WAV file)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import Response, StreamingResponse

from serve_app.ingress.dependencies import request_id, synthesis_service
from serve_app.ingress.schemas import TTSForm, TTSStreamForm
from serve_app.ingress.synthesis import AUDIO_WAV, SynthesisService

router = APIRouter(tags=["tts"])

_ERRORS = {
    413: {"description": "text or prompt_audio over the configured limit"},
    415: {"description": "prompt_audio is not decodable audio"},
    422: {"description": "a field is missing or out of range; `error.field` names it"},
    503: {"description": "the model is at capacity; retry after `Retry-After` seconds"},
}
_WAV = {"content": {AUDIO_WAV: {"schema": {"type": "string", "format": "binary"}}}}


@router.post(
    "/api/tts/stream",
    response_class=StreamingResponse,
    responses={
        200: {**_WAV, "description": "One WAV header (sizes 0xFFFFFFFF), then PCM16 mono as it is generated."},
        **_ERRORS,
    },
    summary="Stream speech as it is generated",
)
async def tts_stream(
    form: Annotated[TTSStreamForm, Form(media_type="multipart/form-data")],
    service: Annotated[SynthesisService, Depends(synthesis_service)],
    rid: Annotated[str, Depends(request_id)],
) -> StreamingResponse:
    return await service.stream_wav(await service.request_from_form(form, rid))


@router.post(
    "/api/tts",
    response_class=Response,
    responses={200: {**_WAV, "description": "A complete PCM16 WAV file with exact sizes."}, **_ERRORS},
    summary="Synthesize a whole utterance",
)
async def tts(
    form: Annotated[TTSForm, Form(media_type="multipart/form-data")],
    service: Annotated[SynthesisService, Depends(synthesis_service)],
    rid: Annotated[str, Depends(request_id)],
) -> Response:
    return await service.wav_file(await service.request_from_form(form, rid))
