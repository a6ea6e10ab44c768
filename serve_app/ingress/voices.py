"""Saved voices: ``POST /api/voices``, ``GET /api/voices``, ``GET`` and ``DELETE /api/voices/{id}``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from serve_app.ingress.dependencies import synthesis_service
from serve_app.ingress.errors import documented_errors
from serve_app.ingress.forms import form_body
from serve_app.ingress.http_audio import read_upload
from serve_app.ingress.synthesis import SynthesisService

router = APIRouter(prefix="/api/voices", tags=["voices"], responses=documented_errors(401, 404, 422, 429))

Service = Annotated[SynthesisService, Depends(synthesis_service)]


@router.post(
    "",
    status_code=201,
    summary="Save a voice: a reference recording and its transcript",
    responses=documented_errors(413, 415),
    dependencies=[Depends(form_body)],
)
async def create(
    service: Service,
    audio: Annotated[UploadFile, File(description="The reference recording, any format libsndfile reads.")],
    text: Annotated[str, Form(min_length=1, max_length=2000, description="What the recording says.")],
    name: Annotated[str, Form(min_length=1, max_length=100, description="A name to list and pick it by.")],
) -> dict:
    samples, rate = await service.reference(await read_upload(audio, service.max_upload_bytes, "audio"), "audio")
    voice = await asyncio.to_thread(service.voices.create, name.strip(), text.strip(), samples, rate)
    return voice.public()


@router.get("", summary="List saved voices")
async def list_voices(service: Service) -> dict:
    return {"voices": [voice.public() for voice in await asyncio.to_thread(service.voices.list)]}


@router.get("/{voice_id}", summary="Describe a saved voice")
async def get(voice_id: str, service: Service) -> dict:
    return (await asyncio.to_thread(service.voices.get, voice_id)).public()


@router.delete("/{voice_id}", status_code=204, summary="Delete a saved voice")
async def delete(voice_id: str, service: Service) -> Response:
    await asyncio.to_thread(service.voices.delete, voice_id)
    return Response(status_code=204)
