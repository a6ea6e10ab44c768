"""Form bodies: refused when they are not forms (415) or when a field is not UTF-8 (400), naming why.

FastAPI reads any other body as an empty form, so JSON sent to a form endpoint was answered
"text: Field required", which sends the user looking for a field they did send. And Starlette decodes
a form field that is not valid UTF-8 anyway (urlencoded: U+FFFD in place of the bad bytes;
multipart: the whole field as Latin-1), so the service spoke text nobody sent. Starlette's parsers
are kept and only their decoding made strict: the classes below replace the ones its ``Request``
builds (:func:`strict_utf8_forms`), since Starlette has no option for it.
"""

from __future__ import annotations

from urllib.parse import unquote_plus, unquote_to_bytes

import starlette.requests
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParser, MultiPartParser

from serve_app.errors import InvalidField, UnsupportedMedia

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def form_body(request: Request) -> None:
    """A route dependency: a body whose Content-Type says it is not a form gets 415 naming the accepted types
    (no Content-Type at all is left to the fields' own checks, which name what is missing)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media_type = declared.partition(";")[0].strip().lower()
    if media_type not in FORM_TYPES:
        raise UnsupportedMedia(
            f"this endpoint takes a form ({' or '.join(FORM_TYPES)}), not {media_type or 'an empty Content-Type'}"
            + (": send the fields as form fields (curl -F text=...)" if media_type == "application/json" else ""),
            "content-type",
        )


class NotUtf8(HTTPException):
    """Raised inside form parsing, which FastAPI lets HTTPExceptions out of (it wraps other errors in a 400)."""

    def __init__(self, field: str, charset: str) -> None:
        super().__init__(400, f"form field {field!r} is not valid {charset}")
        self.field = field


def _check(field: str, data: bytes, charset: str) -> None:
    try:
        data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise NotUtf8(field, charset) from None


class StrictFormParser(FormParser):
    """application/x-www-form-urlencoded, whose percent-escapes must decode to UTF-8."""

    def on_field_end(self) -> None:
        name = unquote_plus(self._field_name.decode("latin-1"))
        _check(name, unquote_to_bytes(bytes(self._field_value).replace(b"+", b" ")), "utf-8")
        super().on_field_end()


class StrictMultiPartParser(MultiPartParser):
    """multipart/form-data, whose text fields must decode in the body's charset (UTF-8 unless its Content-Type
    says otherwise)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            _check(part.field_name, bytes(part.data), self._charset or "utf-8")
        super().on_part_end()


def strict_utf8_forms() -> None:
    """Every form this process parses is parsed strictly (Starlette looks its parsers up at each parse)."""
    starlette.requests.FormParser = StrictFormParser  # type: ignore[misc]
    starlette.requests.MultiPartParser = StrictMultiPartParser  # type: ignore[misc]


def stored_name(name: str) -> str:
    """A voice's or adapter's name as kept: trimmed, and not blank (422 naming ``name``)."""
    if not (trimmed := name.strip()):
        raise InvalidField("name is blank", "name")
    return trimmed
