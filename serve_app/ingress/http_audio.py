"""What the HTTP routes add around the transport-free request building and model client: uploads in,
responses out."""

from __future__ import annotations

from fastapi import UploadFile
from fastapi.responses import Response, StreamingResponse

from serve_app.errors import InvalidField, PayloadTooLarge
from serve_app.ingress import audio_output
from serve_app.ingress.audio_output import Output
from serve_app.ingress.model_client import ModelClient
from serve_app.model.types import SynthesisRequest


async def read_upload(upload: UploadFile | None, limit: int, field: str) -> bytes:
    """An uploaded file's bytes (none: empty), refused past ``limit`` before more than that is read."""
    if upload is None:
        return b""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{field} is larger than {limit} bytes", field)
    if not data and upload.filename:
        raise InvalidField(f"{field} is an empty file", field)
    return data


async def streaming_response(models: ModelClient, request: SynthesisRequest, output: Output) -> StreamingResponse:
    """Audio whose first bytes leave as soon as the first chunk exists."""
    audio = await audio_output.encoded_stream(models, request, output)
    return StreamingResponse(audio, media_type=output.media_type, headers=output.headers())


async def whole_response(models: ModelClient, request: SynthesisRequest, output: Output) -> Response:
    body = await audio_output.whole(models, request, output)
    return Response(body, media_type=output.media_type, headers=output.headers())
