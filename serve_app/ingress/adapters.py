"""LoRA adapters: ``POST /api/adapters``, ``GET /api/adapters``, ``GET`` and ``DELETE /api/adapters/{id}``, each
for the caller's tenant (``serve_app/store/adapter_store.py``; what a replica does with them:
``serve_app/model/adapters.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi import Path as PathParameter

from serve_app.errors import BadRequest, InvalidField, PayloadTooLarge
from serve_app.ingress.dependencies import caller, model_client, request_builder
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.forms import form_body, form_parts, stored_name
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import MAX_NAME_CHARS
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.model.adapters import ZIP_MAGIC
from serve_app.store.adapter_store import new_adapter
from serve_app.store.tenants import Principal

router = APIRouter(prefix="/api/adapters", tags=["adapters"], responses=documented_errors(401, 404, 422, 429))

Models = Annotated[ModelClient, Depends(model_client)]
Requests = Annotated[RequestBuilder, Depends(request_builder)]
Caller = Annotated[Principal, Depends(caller)]
AdapterId = Annotated[str, PathParameter(max_length=MAX_NAME_CHARS)]
CHUNK_BYTES = 1 << 20


@router.post(
    "",
    status_code=201,
    summary="Upload a LoRA adapter (voxcpm's lora_weights.safetensors, or its .ckpt) for a model",
    responses=documented_errors(400, 403, 409, 413, 415, 503, 507),
    dependencies=[Depends(form_body)],
    openapi_extra=form_parts(files=1, fields=7),  # weights; name, model, r, alpha, enable_lm/_dit/_proj
)
async def create(
    models: Models,
    requests: Requests,
    who: Caller,
    name: Annotated[str, Form(min_length=1, max_length=MAX_NAME_CHARS, description="A name to list and pick it by.")],
    weights: Annotated[
        UploadFile, File(description="voxcpm's lora_weights.safetensors, or lora_weights.ckpt (read weights-only).")
    ],
    model: Annotated[
        str | None, Form(max_length=MAX_NAME_CHARS, description="The model it was trained for (default: the default).")
    ] = None,
    r: Annotated[int | None, Form(description="Its rank, checked against the model's LoRA shape.")] = None,
    alpha: Annotated[float | None, Form(description="Its alpha, checked against the model's.")] = None,
    enable_lm: Annotated[bool | None, Form(description="Trained on the LMs, checked against the model's.")] = None,
    enable_dit: Annotated[bool | None, Form(description="Trained on the DiT, checked against the model's.")] = None,
    enable_proj: Annotated[bool | None, Form(description="Trained on the projections, as the model's.")] = None,
) -> dict:
    name = stored_name(name)
    model = models.resolve(model)
    shape = (await models.model_info(model)).lora
    if shape is None:
        raise BadRequest(f"model {model!r} serves no adapters (its `lora:` is null)", "model")
    given = {"r": r, "alpha": alpha, "enable_lm": enable_lm, "enable_dit": enable_dit, "enable_proj": enable_proj}
    for field, value in given.items():
        if value is not None and value != shape[field]:
            raise BadRequest(f"{field} is {value}; model {model!r} serves adapters with {field} {shape[field]}", field)
    store = requests.adapters
    with store.records.staging("weights") as staging:
        file, size, digest = await _staged(weights, staging, requests.max_adapter_bytes)
        await models.check_adapter(model, str(staging / file))
        adapter = new_adapter(name, model, shape, file, digest, size)
        adapter = await asyncio.to_thread(store.commit, staging, adapter, who)
    return adapter.public()


async def _staged(upload: UploadFile, staging: Path, limit: int) -> tuple[str, int, str]:
    """The upload written into ``staging`` under a name of ours (never the upload's file name), a chunk at a
    time, refused past ``limit``: (file name, bytes, sha256)."""
    first = await upload.read(CHUNK_BYTES)
    if not first:
        raise InvalidField("weights is an empty file", "weights")
    file = "weights.ckpt" if first.startswith(ZIP_MAGIC) else "weights.safetensors"
    digest, size = hashlib.sha256(), 0
    with open(staging / file, "wb") as out:
        chunk = first
        while chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"weights is larger than {limit} bytes", "weights")
            digest.update(chunk)
            await asyncio.to_thread(out.write, chunk)
            chunk = await upload.read(CHUNK_BYTES)
        out.flush()
        os.fsync(out.fileno())
    return file, size, digest.hexdigest()


@router.get(
    "", summary="The adapters the caller may use (declared, its tenant's, the shared ones) and each model's LoRA shape"
)
async def list_adapters(models: Models, requests: Requests, who: Caller) -> dict:
    adapters = await asyncio.to_thread(requests.adapters.list, who)
    shapes = {name: (await models.model_info(name)).lora for name in models.model_names}
    return {"adapters": [adapter.public() for adapter in adapters], "models": shapes}


@router.get("/{adapter_id}", summary="Describe an adapter")
async def get(adapter_id: AdapterId, requests: Requests, who: Caller) -> dict:
    return (await asyncio.to_thread(requests.adapters.get, adapter_id, who)).public()


@router.delete(
    "/{adapter_id}",
    status_code=204,
    summary="Delete an uploaded adapter (a shared one: admins only; a declared one: never)",
    responses=documented_errors(403),
)
async def delete(adapter_id: AdapterId, requests: Requests, who: Caller) -> Response:
    await asyncio.to_thread(requests.adapters.delete, adapter_id, who)
    return Response(status_code=204)
