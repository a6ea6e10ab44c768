"""The contexts of one WebSocket conversation, without the socket: each context's text cut into sentences as it
arrives, and the limits that keep a socket's text bounded.

A context is one utterance in one voice. At most ``max_contexts`` are open at once, and each is forgotten
once done, cancelled or failed: a client could otherwise open one per message and make every message cost
them all. At most ``max_buffered_chars`` characters wait to be spoken, all contexts together; that total is
kept up to date context by context, never summed, so a message costs what it adds.

The table answers each message with the lines the speaker is to say (``ws_speaker.py``), in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from serve_app.errors import PayloadTooLarge, RateLimited
from serve_app.model.types import PromptAudio
from serve_app.text.stream import SentenceBuffer


@dataclass(eq=False)
class Context:
    """One utterance in one voice: its unspoken text (the table's), and how much of its audio has been sent (the
    speaker's)."""

    id: str
    buffer: SentenceBuffer
    anchor: PromptAudio | None = None  # the first sentence's audio, the prompt of the rest (plan.own_voice)
    samples: int = 0  # sent, at the output rate
    held: bytes = b""  # the end of the sentence's audio, kept until its timestamps have gone
    segments: int = 0
    queued_chars: int = 0  # cut into sentences, waiting for the speaker
    counted: int = 0  # its share of ContextTable.buffered
    cancelled: bool = False
    started: float | None = None  # monotonic time of its first audio


Line = tuple[Context, str | None]  # a sentence to speak, or None: the context is done (its `done` event)


class ContextTable:
    """The open contexts by id, and those ended but not yet done."""

    def __init__(self, max_contexts: int, max_buffered_chars: int, max_wait_s: float) -> None:
        self.max_contexts = max_contexts
        self.max_buffered_chars = max_buffered_chars
        self.max_wait_s = max_wait_s
        self.open: dict[str, Context] = {}
        self.ended: dict[str, list[Context]] = {}  # after `end`, until `done`, by id (ended again: more)
        self.buffered = 0  # characters received and not yet spoken, all contexts

    def text(self, context_id: str, text: str) -> list[Line]:
        """Text for a context, opening it if it is new and there is room (each open one costs memory and timer
        work); empty text opens none. Past a limit the text is refused, not added (PayloadTooLarge, RateLimited)."""
        if not text:
            return []
        context = self.open.get(context_id)
        if self.buffered + len(text) > self.max_buffered_chars:
            raise PayloadTooLarge(
                f"more than {self.max_buffered_chars} characters would wait to be spoken; this text "
                "was not added: send it again once audio has caught up",
                "text",
            )
        if context is None and len(self.open) >= self.max_contexts:
            raise RateLimited(
                f"at most {self.max_contexts} contexts may be open at once; this text was not added: "
                "end or cancel a context to make room",
                "context_id",
            )
        if context is None:
            context = self.open[context_id] = self._new(context_id)
        return self._cut(context, *context.buffer.append(text))

    def flush(self, context_id: str) -> list[Line]:
        """Everything an open context holds, as its last sentence so far; a flush of no context opens none."""
        context = self.open.get(context_id)
        return [] if context is None else self._cut(context, context.buffer.flush())

    def end(self, context_id: str) -> list[Line]:
        """A context's last sentence and its end: text for this id from now on starts a new context (an id
        never opened ends too, with nothing to say)."""
        lines = self.flush(context_id)
        ended = self.open.pop(context_id, None) or self._new(context_id)
        self.ended.setdefault(ended.id, []).append(ended)
        return [*lines, (ended, None)]

    def cancel(self, context_id: str) -> list[Context]:
        """The contexts by that id (one still open, and any ended but not yet done), cancelled and forgotten."""
        targets = self.ended.pop(context_id, [])
        if (open_context := self.open.get(context_id)) is not None:
            targets.append(open_context)
        for context in targets:
            self.drop(context)
        return targets

    def overdue(self) -> list[Line]:
        """The sentences that waited ``max_wait_s`` for their end (``SentenceBuffer.overdue``)."""
        return [line for context in self.open.values() for line in self._cut(context, context.buffer.overdue())]

    def deadlines(self) -> Iterator[float]:
        """When each open context's waiting text may be cut short (:meth:`overdue`)."""
        return filter(None, (context.buffer.deadline() for context in self.open.values()))

    def taken(self, context: Context, sentence: str) -> None:
        """The speaker started on one of the context's sentences: it waits no longer."""
        context.queued_chars -= len(sentence)
        self._count(context)

    def forget(self, context: Context) -> None:
        """A context done, cancelled or failed: its text no longer counts, and the table keeps no reference to it
        (the speaker drops its lines as it reaches them)."""
        if self.open.get(context.id) is context:
            del self.open[context.id]
        ended = self.ended.get(context.id, [])
        if context in ended:
            ended.remove(context)
            if not ended:
                del self.ended[context.id]
        self.buffered -= context.counted
        context.counted = 0

    def drop(self, context: Context) -> None:
        """A context cancelled, or one the service could not speak: none of its lines is said."""
        context.cancelled = True
        self.forget(context)

    def _new(self, context_id: str) -> Context:
        return Context(context_id, SentenceBuffer(self.max_wait_s))

    def _cut(self, context: Context, *sentences: str | None) -> list[Line]:
        said = [sentence for sentence in sentences if sentence]
        context.queued_chars += sum(map(len, said))
        self._count(context)
        return [(context, sentence) for sentence in said]

    def _count(self, context: Context) -> None:
        """Bring ``buffered`` up to date with one context's share: a message costs no sum over contexts."""
        share = len(context.buffer) + context.queued_chars
        self.buffered += share - context.counted
        context.counted = share
