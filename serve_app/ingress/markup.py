"""A request's text as the model speaks it: plain text as sent, or SSML (``text/ssml.py``) as spans, each
``<voice name>`` resolved as the caller may use a saved voice (another tenant's is a 404 naming the text's
field, as an absent one is), once per name.

Every route that takes text asks here (the native forms, OpenAI's ``input``, job items), so SSML means one
thing everywhere; elements outside the subset are spoken and named (``ignored``: the routes' X-Ignored-Fields
header) or, with ``limits.ssml.strict``, refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_app.config.access import SSMLConfig
from serve_app.errors import BadRequest
from serve_app.model.types import Span
from serve_app.store.voice_store import Voice
from serve_app.text import ssml

VoiceLookup = Callable[[str, str], Awaitable[Voice]]  # (id or name, field) -> the caller's saved voice


@dataclass(frozen=True)
class Marked:
    """What to say: ``text`` as sent when it is plain, else ``spans`` (and ``text`` empty beside them)."""

    text: str
    spans: tuple[Span, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def request_text(self) -> dict[str, object]:
        """A model request's ``text`` and ``spans`` fields."""
        return {"text": "" if self.spans else self.text, "spans": self.spans}


async def marked(text: str, field: str, config: SSMLConfig, voice: VoiceLookup) -> Marked:
    """``text`` read: SSML as spans with their voices resolved, plain text as it is."""
    if not ssml.is_ssml(text):
        return Marked(text)
    markup = ssml.parse(text, config, field)
    if not any(span.text for span in markup.spans):
        raise BadRequest("the SSML says nothing (only breaks, or no text)", field)
    if config.strict and markup.ignored:
        raise BadRequest(f"SSML outside the supported subset: {', '.join(markup.ignored)}", field)
    voices: dict[str, Voice] = {}
    for name in {span.voice for span in markup.spans if span.voice is not None}:
        voices[name] = await voice(name, field)
    spans = tuple(
        Span(span.text, voices.get(span.voice) if span.voice else None, span.speed, span.pause_after)
        for span in markup.spans
    )
    return Marked(text, spans, tuple(markup.ignored))
