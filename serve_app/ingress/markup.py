"""A request's text as the model speaks it: plain text as sent, or SSML (``text/ssml.py``) as spans, each
``<voice name>`` resolved as the caller may use a saved voice (another tenant's is a 404 naming the text's
field, as an absent one is), once per name.

Every route that takes text asks here (the native forms, OpenAI's ``input``, job items), so SSML means one
thing everywhere; elements outside the subset are spoken and named (``ignored``: the routes' X-Ignored-Fields
header) or, with ``limits.ssml.strict``, refused. The request's pronunciation lexicons apply here too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_app.config.access import SSMLConfig
from serve_app.errors import BadRequest, PayloadTooLarge
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


TURN_PAUSE_S = 0.3  # silence after a dialogue's turn unless it says otherwise


async def dialogue(
    turns: str, field: str, config: SSMLConfig, voice: VoiceLookup, rewrite: Callable[[str], str] | None = None
) -> Marked:
    """A ``turns`` form field (JSON ``[{"voice_id", "text", "pause_after"?}]``) as spans, each turn in its saved
    voice; a 4xx naming the turn's field where one is not that."""
    try:
        listed = json.loads(turns)
    except ValueError as error:
        raise BadRequest(f"{field} is not JSON: {error}", field) from None
    if not isinstance(listed, list) or not listed:
        raise BadRequest(f'{field} is a JSON list of turns: [{{"voice_id": ..., "text": ...}}, ...]', field)
    if len(listed) > config.max_voices:
        raise PayloadTooLarge(f"{field} has {len(listed)} turns; at most {config.max_voices}", field)
    spans = []
    for index, turn in enumerate(listed):
        where = f"{field}[{index}]"
        if not isinstance(turn, dict) or set(turn) - {"voice_id", "text", "pause_after"}:
            raise BadRequest(f"{where}: an object of voice_id, text and pause_after", where)
        text, voice_id, pause = turn.get("text"), turn.get("voice_id"), turn.get("pause_after", TURN_PAUSE_S)
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f"{where}.text is required", f"{where}.text")
        if not isinstance(voice_id, str) or not voice_id.strip():
            raise BadRequest(f"{where}.voice_id is required: a saved voice's id or name", f"{where}.voice_id")
        if not isinstance(pause, int | float) or not 0 <= pause <= config.max_break_s:
            raise BadRequest(f"{where}.pause_after: 0 to {config.max_break_s:g} seconds", f"{where}.pause_after")
        said = rewrite(text) if rewrite is not None else text
        last = index == len(listed) - 1
        spans.append(Span(said, await voice(voice_id.strip(), f"{where}.voice_id"), 1.0, 0.0 if last else pause))
    return Marked(" ".join(span.text for span in spans), tuple(spans))


async def marked(
    text: str, field: str, config: SSMLConfig, voice: VoiceLookup, rewrite: Callable[[str], str] | None = None
) -> Marked:
    """``text`` read: SSML as spans with their voices resolved, plain text as it is; ``rewrite`` (the request's
    lexicons) applied to the text as written (``<sub>``, ``<say-as>`` and ``<phoneme>`` win over it)."""
    if not ssml.is_ssml(text):
        return Marked(rewrite(text) if rewrite is not None else text)
    markup = ssml.parse(text, config, field, rewrite)
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
