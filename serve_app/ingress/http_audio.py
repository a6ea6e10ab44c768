"""The last stop of an HTTP request's one pass: the answer's audio as the response, streamed or whole, with the
headers that say what it is."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse

from serve_app.ingress.outputs import Output


def streaming(audio: AsyncIterator[bytes], output: Output) -> StreamingResponse:
    """Audio whose first bytes leave as soon as the first chunk exists."""
    return StreamingResponse(audio, media_type=output.media_type, headers=output.headers())


def whole(body: bytes, output: Output) -> Response:
    return Response(body, media_type=output.media_type, headers=output.headers())
