"""A request's text read once for every route: plain as sent, SSML as spans whose voices are looked up as the
caller may use them (once per name), elements outside the subset named or, strictly, refused."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config.access import SSMLConfig
from serve_app.errors import BadRequest, NotFound
from serve_app.ingress.markup import marked
from serve_app.model.types import Span
from serve_app.store.voice_store import Voice

NARRATOR = Voice(voice_id="v1", name="narrator", text="t", sample_rate=16000, seconds=1.0, digest="d", created=0.0)


def lookups() -> tuple[list[tuple[str, str]], object]:
    asked: list[tuple[str, str]] = []

    async def lookup(name: str, field: str) -> Voice:
        asked.append((name, field))
        if name != "narrator":
            raise NotFound(f"no saved voice {name!r}", field)  # absent, or another tenant's
        return NARRATOR

    return asked, lookup


def test_plain_text_is_as_sent() -> None:
    asked, lookup = lookups()
    said = asyncio.run(marked("I <3 SSML", "text", SSMLConfig(), lookup))  # type: ignore[arg-type]
    assert said.request_text == {"text": "I <3 SSML", "spans": ()} and asked == []


def test_ssml_voices_are_looked_up_once_per_name_for_the_field() -> None:
    asked, lookup = lookups()
    text = '<speak><voice name="narrator">A.</voice> B. <voice name="narrator">C.</voice></speak>'
    said = asyncio.run(marked(text, "input", SSMLConfig(), lookup))  # type: ignore[arg-type]
    assert said.spans == (Span("A.", NARRATOR), Span("B."), Span("C.", NARRATOR)) and said.text == text
    assert said.request_text["text"] == "" and asked == [("narrator", "input")]
    with pytest.raises(NotFound) as missing:
        asyncio.run(marked('<speak><voice name="theirs">x</voice></speak>', "input", SSMLConfig(), lookup))  # type: ignore[arg-type]
    assert missing.value.field == "input"


def test_outside_the_subset_is_named_or_strictly_refused() -> None:
    _, lookup = lookups()
    text = "<speak><emphasis>Loud</emphasis></speak>"
    assert asyncio.run(marked(text, "text", SSMLConfig(), lookup)).ignored == ("emphasis",)  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as refused:
        asyncio.run(marked(text, "text", SSMLConfig(strict=True), lookup))  # type: ignore[arg-type]
    assert "emphasis" in refused.value.message and refused.value.field == "text"
    with pytest.raises(BadRequest):
        asyncio.run(marked('<speak><break time="1s"/></speak>', "text", SSMLConfig(), lookup))  # type: ignore[arg-type]
