"""Form bodies: refused when they are not forms (415), when a field is not UTF-8 (400), or at the first part
more than the route takes (413), naming why.

FastAPI reads any other body as an empty form, so JSON sent to a form endpoint was answered
"text: Field required", which sends the user looking for a field they did send. And Starlette decodes
a form field that is not valid UTF-8 anyway (urlencoded: U+FFFD in place of the bad bytes;
multipart: the whole field as Latin-1), so the service spoke text nobody sent. Starlette's parsers
are kept and only their decoding made strict: the classes below replace the ones its ``Request``
builds (:func:`strict_utf8_forms`), since Starlette has no option for it.

Each form route states the parts it takes (:func:`form_parts`, in its OpenAPI operation as ``x-form-parts``);
the edge sets them for the request (``FORM_PARTS``) and the parser refuses the first part past them, and any
text field longer than the longest text the service takes. File parts go to disk past ``SPOOL_BYTES``
(Starlette keeps 1 MiB of each in memory): the body Serve's proxy hands over whole is the one copy in memory.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import unquote_plus, unquote_to_bytes

import starlette.requests
from fastapi import Request, UploadFile
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from serve_app.errors import InvalidField, UnsupportedMedia

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
SPOOL_BYTES = 64 * 1024  # a file part past this is written to a temporary file, not kept in memory
PARTS_KEY = "x-form-parts"


@dataclass(frozen=True)
class FormParts:
    """What one form route takes: file parts, other fields, and the bytes one field may have."""

    files: int
    fields: int
    field_bytes: int


FORM_PARTS: ContextVar[FormParts | None] = ContextVar("form_parts", default=None)  # set by the edge per request


def form_parts(files: int, fields: int) -> dict[str, Any]:
    """A form route's ``openapi_extra``: the parts it takes, read by the edge (:func:`parts_by_path`)."""
    return {PARTS_KEY: {"files": files, "fields": fields}}


def model_parts(form: type[BaseModel]) -> dict[str, Any]:
    """:func:`form_parts` of a form model: its upload fields are its files, the rest its fields."""
    files = sum(UploadFile in (field.annotation, *get_args(field.annotation)) for field in form.model_fields.values())
    return form_parts(files, len(form.model_fields) - files)


def parts_by_path(openapi: dict[str, Any], field_bytes: int) -> dict[str, FormParts]:
    """The POST paths of form routes and the parts each takes, from the app's OpenAPI document."""
    found = {}
    for path, operations in openapi.get("paths", {}).items():
        if (parts := operations.get("post", {}).get(PARTS_KEY)) is not None:
            found[path] = FormParts(parts["files"], parts["fields"], field_bytes)
    return found


class TooManyParts(HTTPException):
    """A part past what the route takes, or a field past the longest the service reads: 413 naming it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(413, message)
        self.field = field


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
        value = unquote_to_bytes(bytes(self._field_value).replace(b"+", b" "))
        self._fields_seen = getattr(self, "_fields_seen", 0) + 1
        if (parts := FORM_PARTS.get()) is not None:
            if self._fields_seen > parts.fields:
                raise TooManyParts(f"too many fields: this route takes at most {parts.fields}", "body")
            if len(value) > parts.field_bytes:
                raise TooManyParts(f"form field {name!r:.40} is longer than {parts.field_bytes} bytes", name)
        _check(name, value, "utf-8")
        super().on_field_end()


class StrictMultiPartParser(MultiPartParser):
    """multipart/form-data, whose text fields must decode in the body's charset (UTF-8 unless its Content-Type
    says otherwise), within the parts the route takes."""

    spool_max_size = SPOOL_BYTES

    def __init__(self, *arguments: Any, **limits: Any) -> None:
        if (parts := FORM_PARTS.get()) is not None:
            limits.update(max_files=parts.files, max_fields=parts.fields, max_part_size=parts.field_bytes)
        super().__init__(*arguments, **limits)

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException as exc:
            if self._current_files <= self.max_files and self._current_fields <= self.max_fields:
                raise  # a malformed part, not one too many: Starlette's 400
            raise TooManyParts(f"{exc.message} (part {self._current_part.field_name!r:.40})", "body") from None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        try:
            super().on_part_data(data, start, end)
        except MultiPartException:
            field = self._current_part.field_name
            raise TooManyParts(f"form field {field!r:.40} is longer than {self.max_part_size} bytes", field) from None

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
