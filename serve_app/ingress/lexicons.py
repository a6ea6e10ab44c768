"""Pronunciation lexicons: ``POST /api/lexicons``, ``GET /api/lexicons``, ``GET`` and ``DELETE
/api/lexicons/{id}``, each for the caller's tenant (``store/lexicon_store.py``; what is in one and how it
matches: ``text/lexicons.py``). A request names up to ``limits.max_request_lexicons`` of them (``lexicons``).

An upload is a W3C PLS file (``file``) or the same entries as JSON (``entries``, or a ``file`` that holds
them: ``[{"grapheme", "alias" or "pinyin", "case_sensitive"}]``), read within ``limits.max_lexicon_bytes``
before it is parsed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi import Path as PathParameter

from serve_app.errors import BadRequest, PayloadTooLarge
from serve_app.ingress.dependencies import caller, request_builder
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.forms import form_body, form_parts, stored_name
from serve_app.ingress.schemas import MAX_NAME_CHARS
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.store.tenants import Principal
from serve_app.text.lexicons import from_entries, from_pls

router = APIRouter(prefix="/api/lexicons", tags=["lexicons"], responses=documented_errors(401, 404, 422, 429))

Requests = Annotated[RequestBuilder, Depends(request_builder)]
Caller = Annotated[Principal, Depends(caller)]
LexiconId = Annotated[str, PathParameter(max_length=MAX_NAME_CHARS)]


@router.post(
    "",
    status_code=201,
    summary="Save a pronunciation lexicon: a W3C PLS file, or its entries as JSON",
    responses=documented_errors(400, 403, 409, 413, 507),
    dependencies=[Depends(form_body)],
    openapi_extra=form_parts(files=1, fields=2),  # file; name, entries
)
async def create(
    requests: Requests,
    who: Caller,
    name: Annotated[str, Form(min_length=1, max_length=MAX_NAME_CHARS, description="A name to list and pick it by.")],
    file: Annotated[
        UploadFile | None, File(description="A W3C PLS 1.0 file (aliases; pinyin phonemes), or its entries as JSON.")
    ] = None,
    entries: Annotated[
        str | None,
        Form(description='Instead of a file: JSON [{"grapheme": "W3C", "alias": "World Wide Web Consortium"}, ...]'),
    ] = None,
) -> dict:
    name = stored_name(name)
    limits = requests.limits
    if (file is None) == (entries is None):
        raise BadRequest("give a PLS file (file) or its entries as JSON (entries), one of them", "file")
    await asyncio.to_thread(requests.lexicons.check_room, who)
    if file is not None:
        data = await file.read(limits.max_lexicon_bytes + 1)
        field = "file"
    else:
        data, field = (entries or "").encode(), "entries"
    if len(data) > limits.max_lexicon_bytes:
        raise PayloadTooLarge(f"{field} is larger than {limits.max_lexicon_bytes} bytes", field)
    if data.lstrip().startswith(b"["):  # the entries as JSON (in a file past the form's field size)
        lexicon = from_entries(_json(data, field), limits.max_lexicon_entries, field)
    else:
        lexicon = await asyncio.to_thread(from_pls, data, limits.max_lexicon_entries, field)
    stored = [(entry.grapheme, entry.alias, entry.case_sensitive) for entry in lexicon.entries]
    saved = await asyncio.to_thread(requests.lexicons.create, who, name, stored, lexicon.skipped, len(data))
    return saved.public()


def _json(data: bytes, field: str) -> object:
    try:
        return json.loads(data)
    except ValueError as error:
        raise BadRequest(f"{field} is not JSON: {error}", field) from None


@router.get("", summary="The lexicons the caller may use (its tenant's and the shared ones)")
async def list_lexicons(requests: Requests, who: Caller) -> dict:
    return {"lexicons": [saved.public() for saved in await asyncio.to_thread(requests.lexicons.list, who)]}


@router.get("/{lexicon_id}", summary="A lexicon and its entries")
async def get(lexicon_id: LexiconId, requests: Requests, who: Caller) -> dict:
    saved = await asyncio.to_thread(requests.lexicons.get, lexicon_id, who)
    stored = await asyncio.to_thread(requests.lexicons.entries, saved)
    listed = [{"grapheme": g, "alias": said, "case_sensitive": case} for g, said, case in stored]
    return {**saved.public(), "entries_list": listed}


@router.delete(
    "/{lexicon_id}",
    status_code=204,
    summary="Delete a lexicon (a shared one: admins only)",
    responses=documented_errors(403),
)
async def delete(lexicon_id: LexiconId, requests: Requests, who: Caller) -> Response:
    await asyncio.to_thread(requests.lexicons.delete, lexicon_id, who)
    return Response(status_code=204)
