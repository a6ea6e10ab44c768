"""The seed's API: ``POST /api/tts/stream`` (chunked audio) and ``POST /api/tts`` (one file); and
``POST /api/tts/with-timestamps`` (one file in JSON, with when each word is spoken)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import Response, StreamingResponse

from serve_app.audio.codecs import MEDIA_TYPES
from serve_app.config import AppConfig
from serve_app.ingress import audio_output, http_audio
from serve_app.ingress.dependencies import aligner, app_config, caller, model_client, request_builder, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.forms import form_body, model_parts
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import TTSForm, TTSStreamForm, TTSTimestampsForm
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.ingress.timestamps import SegmentClock, json_with_audio
from serve_app.metrics import RequestTrace
from serve_app.store.tenants import Principal
from serve_app.timing.aligner import Aligner

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
    request, output = await requests.from_form(form, trace, who)
    chunks = await models.chunks(request, output)
    return http_audio.streaming(audio_output.encoded(output, chunks), output)  # type: ignore[arg-type]


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
    request, output = await requests.from_form(form, trace, who)
    samples = await models.synthesize(request, output.model.name)
    return http_audio.whole(await audio_output.whole(output, samples), output)


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
    request, output = await requests.from_form(form, trace, who)
    sentences = await models.chunks(request, output, by_sentence=True)
    clock = SegmentClock(heard_by, form.timestamps, output.model.sample_rate, output.speed)
    audio, segments = await audio_output.whole_timed(output, sentences, clock, config.limits.max_timestamped_audio_s)
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
