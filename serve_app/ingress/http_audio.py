"""What the HTTP routes add around the transport-free synthesis service: uploads in, responses out."""

from __future__ import annotations

from fastapi import UploadFile
from fastapi.responses import Response, StreamingResponse

from serve_app.errors import InvalidField, PayloadTooLarge
from serve_app.ingress.synthesis import Output, SynthesisService
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


async def streaming_response(service: SynthesisService, request: SynthesisRequest, output: Output) -> StreamingResponse:
    """Audio whose first bytes leave as soon as the first chunk exists."""
    audio = await service.encoded_stream(request, output)
    return StreamingResponse(audio, media_type=output.media_type, headers=output.headers())


async def whole_response(service: SynthesisService, request: SynthesisRequest, output: Output) -> Response:
    return Response(await service.whole(request, output), media_type=output.media_type, headers=output.headers())
