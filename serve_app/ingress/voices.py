"""Saved voices: ``POST /api/voices``, ``GET /api/voices``, ``GET`` and ``DELETE /api/voices/{id}``, each for
the caller's tenant (``serve_app/store/voice_store.py``: what a tenant sees, what admins share)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Response, UploadFile

from serve_app.errors import InvalidField
from serve_app.ingress.dependencies import caller, model_client, request_builder, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.forms import form_body, form_parts, stored_name
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import MAX_INSTRUCTIONS_CHARS, MAX_NAME_CHARS, optional_text
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.metrics import RequestTrace
from serve_app.model.types import SynthesisRequest
from serve_app.store.tenants import Principal

router = APIRouter(prefix="/api/voices", tags=["voices"], responses=documented_errors(401, 404, 422, 429))

Models = Annotated[ModelClient, Depends(model_client)]
Requests = Annotated[RequestBuilder, Depends(request_builder)]
Caller = Annotated[Principal, Depends(caller)]
VoiceId = Annotated[str, Path(max_length=MAX_NAME_CHARS)]
# What a designed voice's sample says when the form gives no text: long enough for a voice to settle.
DESIGN_SAMPLE_TEXT = "Hello! This is my voice. I can read anything you like, clearly and naturally."
DESIGN_SAMPLE_MAX_LEN = 600  # generation steps: tens of seconds at most, whatever the model


@router.post(
    "",
    status_code=201,
    summary="Save a voice: a recording and its transcript, or one designed from a description (VoxCPM2)",
    responses=documented_errors(400, 403, 409, 413, 415, 503, 507),
    dependencies=[Depends(form_body)],
    openapi_extra=form_parts(files=2, fields=6),  # audio, reference_audio; name, text, description, model, adapter,
    # lexicons
)
async def create(
    models: Models,
    requests: Requests,
    who: Caller,
    trace: Annotated[RequestTrace, Depends(request_trace)],
    name: Annotated[str, Form(min_length=1, max_length=MAX_NAME_CHARS, description="A name to list and pick it by.")],
    audio: Annotated[
        UploadFile | None, File(description="The recording, any format libsndfile reads (not with description).")
    ] = None,
    text: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=2000,
            description="What the recording says (required with audio); with description, what the generated "
            "sample says (default: a short greeting).",
        ),
    ] = None,
    reference_audio: Annotated[
        UploadFile | None,
        File(description="VoxCPM2 models: an isolated reference recording kept beside audio + text."),
    ] = None,
    description: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=MAX_INSTRUCTIONS_CHARS,
            description="Design the voice instead of uploading one (VoxCPM2 models): the service speaks a sample "
            "with this description and keeps both; requests naming the voice then sound like that speaker.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        Form(
            max_length=MAX_NAME_CHARS,
            description="With description: the VoxCPM2 model that designs it (default: the default).",
        ),
    ] = None,
    adapter: Annotated[
        str | None,
        Form(
            max_length=MAX_NAME_CHARS,
            description="A LoRA adapter (id or name) that requests naming this voice speak with, unless they name one.",
        ),
    ] = None,
    lexicons: Annotated[
        str | None,
        Form(
            max_length=1000,
            description="Pronunciation lexicons (ids or names, comma-separated, up to 3) for requests naming this "
            "voice and no lexicons of their own: OpenAI's clients get them through the voice.",
        ),
    ] = None,
) -> dict:
    name = stored_name(name)
    adapter_id = None
    if adapter:
        adapter_id = (await asyncio.to_thread(requests.adapters.find, adapter, "adapter", who)).adapter_id
    named = [lexicon.strip() for lexicon in (lexicons or "").split(",") if lexicon.strip()]
    lexicon_ids = await requests.lexicon_ids(named, who)  # refused now (404, 400 naming lexicons), not later
    text = optional_text(text)
    if (description := optional_text(description)) is not None:
        if audio is not None or reference_audio is not None:
            raise InvalidField("give either description or audio, not both", "description")
        sample = name, description, text, model, adapter_id, lexicon_ids
        return await _designed(models, requests, who, trace, *sample)
    if audio is None:
        raise InvalidField("audio (with its transcript, text) or description is required", "audio")
    if text is None:
        raise InvalidField("text (what audio says) is required with audio", "text")
    samples, rate = await requests.reference(await requests.upload(audio, "audio"), "audio")
    reference = None
    if reference_audio is not None:
        data = await requests.upload(reference_audio, "reference_audio")
        reference = await requests.reference(data, "reference_audio")
    voice = await asyncio.to_thread(
        requests.voices.create, who, name, text, samples, rate, reference, None, adapter_id, lexicon_ids
    )
    return voice.public()


async def _designed(
    models: ModelClient,
    requests: RequestBuilder,
    who: Principal,
    trace: RequestTrace,
    name: str,
    description: str,
    text: str | None,
    model: str | None,
    adapter_id: str | None,
    lexicon_ids: tuple[str, ...],
) -> dict:
    """A sample spoken from the description, saved as the voice's recording with it."""
    model = models.resolve(model)
    await models.require(model, {"description": description})
    info = await models.model_info(model)
    sample_text = text or DESIGN_SAMPLE_TEXT
    requests.check_text_length(sample_text, "text")
    trace.model = model
    request = SynthesisRequest(text=sample_text, instructions=description, max_len=DESIGN_SAMPLE_MAX_LEN, **trace.ids)
    samples = await models.synthesize(request, model)
    voice = await asyncio.to_thread(
        requests.voices.create,
        who,
        name,
        sample_text,
        samples,
        info.sample_rate,
        None,
        description,
        adapter_id,
        lexicon_ids,
    )
    return voice.public()


@router.get("", summary="List the voices the caller may use: its tenant's and the shared ones (admins: all)")
async def list_voices(requests: Requests, who: Caller) -> dict:
    return {"voices": [voice.public() for voice in await asyncio.to_thread(requests.voices.list, who)]}


@router.get("/{voice_id}", summary="Describe a saved voice")
async def get(voice_id: VoiceId, requests: Requests, who: Caller) -> dict:
    return (await asyncio.to_thread(requests.voices.get, voice_id, who)).public()


@router.delete(
    "/{voice_id}",
    status_code=204,
    summary="Delete a saved voice (a shared one: admins only)",
    responses=documented_errors(403),
)
async def delete(voice_id: VoiceId, requests: Requests, who: Caller) -> Response:
    await asyncio.to_thread(requests.voices.delete, voice_id, who)
    return Response(status_code=204)
