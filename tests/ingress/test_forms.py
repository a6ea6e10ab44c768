"""Form parsing in-process: the parts a route takes, counted as they arrive; a malformed part stays a 400."""

from __future__ import annotations

import asyncio

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from serve_app.ingress.forms import FORM_PARTS, FormParts, TooManyParts, strict_utf8_forms


def parse(body: bytes, parts: FormParts) -> None:
    """Parse ``body`` as multipart/form-data (boundary ``b``) within ``parts``."""
    strict_utf8_forms()

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = (b"content-type", b"multipart/form-data; boundary=b")
    scope = {"type": "http", "method": "POST", "headers": [content_type], "app": None}  # as in an app: 400s

    async def run() -> None:
        FORM_PARTS.set(parts)
        form = await Request(scope, receive).form()
        await form.close()

    asyncio.run(run())


def file_part(name: str) -> bytes:
    return f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="a.wav"\r\n\r\nRIFF\r\n'.encode()


def field_part(name: str) -> bytes:
    return f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\nx\r\n'.encode()


def test_a_file_or_field_past_what_the_route_takes_is_a_413_at_that_part() -> None:
    within = FormParts(files=1, fields=1, field_bytes=1024)
    parse(file_part("audio") + field_part("text") + b"--b--\r\n", within)
    with pytest.raises(TooManyParts) as files:
        parse(file_part("a") + file_part("b") + b"--b--\r\n", within)
    assert files.value.status_code == 413 and "Too many files" in files.value.detail
    with pytest.raises(TooManyParts):
        parse(field_part("a") + field_part("b") + b"--b--\r\n", within)
    with pytest.raises(TooManyParts) as long_field:
        parse(b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n' + b"x" * 2000 + b"\r\n--b--\r\n", within)
    assert long_field.value.field == "text"


def test_a_malformed_part_is_not_counted_as_one_too_many() -> None:
    with pytest.raises(HTTPException) as malformed:
        parse(b"--b\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--b--\r\n", FormParts(1, 1, 1024))
    assert malformed.value.status_code == 400 and not isinstance(malformed.value, TooManyParts)
