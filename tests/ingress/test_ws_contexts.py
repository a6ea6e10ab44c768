"""A WebSocket's contexts without a socket: text cut into the lines the speaker says, and the limits on contexts
and buffered characters (the protocol itself is tested through the real stack in tests/service/test_ws.py)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve_app.errors import PayloadTooLarge, RateLimited
from serve_app.ingress.ws_contexts import Context, ContextTable, Line


def table(max_contexts: int = 3, max_buffered_chars: int = 100, max_wait_s: float = 10.0) -> ContextTable:
    return ContextTable(max_contexts, max_buffered_chars, max_wait_s)


def said(lines: list[Line]) -> list[tuple[str, str | None]]:
    return [(context.id, sentence) for context, sentence in lines]


def test_text_becomes_the_sentences_it_completes_and_the_rest_waits() -> None:
    contexts = table()
    assert said(contexts.text("a", "Hello there. How")) == [("a", "Hello there.")]
    assert said(contexts.text("a", " are you? Fine")) == [("a", "How are you?")]
    assert contexts.buffered == len("Hello there.") + len("How are you?") + len(" Fine")  # until said
    assert said(contexts.flush("a")) == [("a", "Fine")]
    assert list(contexts.open) == ["a"]  # a flush leaves the context open


def test_what_waits_is_counted_until_the_speaker_takes_it_or_the_context_is_forgotten() -> None:
    contexts = table()
    [(context, sentence)] = contexts.text("a", "One two. Three")
    assert sentence is not None
    contexts.taken(context, sentence)
    assert contexts.buffered == len(" Three")  # the buffer keeps the space; it is not said
    contexts.forget(context)
    assert contexts.buffered == 0
    assert contexts.open == {}


def test_empty_text_and_a_flush_of_no_context_open_nothing() -> None:
    contexts = table()
    assert contexts.text("a", "") == []
    assert contexts.flush("b") == []
    assert contexts.open == {}


def test_text_past_the_buffered_characters_is_refused_and_not_added() -> None:
    contexts = table(max_buffered_chars=10)
    contexts.text("a", "12345")
    with pytest.raises(PayloadTooLarge) as refused:
        contexts.text("b", "123456")
    assert refused.value.field == "text"
    assert list(contexts.open) == ["a"]
    assert contexts.buffered == 5
    contexts.text("a", "12345")  # up to the limit is fine


def test_a_context_past_the_limit_is_refused_and_the_open_ones_go_on() -> None:
    contexts = table(max_contexts=2)
    contexts.text("a", "one")
    contexts.text("b", "two")
    with pytest.raises(RateLimited) as refused:
        contexts.text("c", "three")
    assert refused.value.field == "context_id"
    contexts.text("a", " more")  # an open context still takes text
    contexts.end("a")  # and an ended one makes room, though not yet done
    contexts.text("c", "three")
    assert list(contexts.open) == ["b", "c"]


def test_end_says_the_rest_then_done_and_the_id_starts_afresh() -> None:
    contexts = table()
    contexts.text("a", "Unfinished")
    lines = contexts.end("a")
    assert said(lines) == [("a", "Unfinished"), ("a", None)]
    first = lines[0][0]
    [(second, _)] = contexts.text("a", "Again. ")
    assert second is not first
    assert contexts.ended == {"a": [first]}
    contexts.forget(first)  # its `done` was sent
    assert contexts.ended == {}
    assert contexts.buffered == len("Again.") + len(" ")


def test_end_of_a_context_never_opened_still_ends_one() -> None:
    contexts = table()
    [(context, sentence)] = contexts.end("x")
    assert (context.id, sentence, context.samples) == ("x", None, 0)
    assert contexts.open == {}


def test_cancel_stops_the_open_context_and_those_ended_but_not_done() -> None:
    contexts = table()
    [(ended, _)] = contexts.text("a", "First. ")
    contexts.end("a")
    contexts.text("a", "Second, still being written")
    cancelled = contexts.cancel("a")
    assert cancelled[0] is ended
    assert len(cancelled) == 2
    assert all(context.cancelled for context in cancelled)
    assert (contexts.open, contexts.ended, contexts.buffered) == ({}, {}, 0)
    assert contexts.cancel("never") == []


def test_drop_forgets_a_context_the_speaker_could_not_speak() -> None:
    contexts = table()
    [(context, _)] = contexts.text("a", "Refused. And more")
    contexts.drop(context)
    assert context.cancelled
    assert (contexts.open, contexts.buffered) == ({}, 0)


def test_text_that_waited_max_wait_s_is_cut_short() -> None:
    waiting = table(max_wait_s=10.0)
    waiting.text("a", "three words here")
    [deadline] = waiting.deadlines()
    assert deadline > time.monotonic()
    assert waiting.overdue() == []
    due = table(max_wait_s=0.0)
    due.text("a", "three words here")
    due.text("b", "")
    assert said(due.overdue()) == [("a", "three words here")]
    assert list(due.deadlines()) == []


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["text", "flush", "end", "cancel", "take", "done"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.text(alphabet="ab .?\n", max_size=12),
    ),
    max_size=60,
)


@given(OPERATIONS)
def test_the_buffered_count_is_always_what_waits_in_the_contexts_kept(operations: list) -> None:
    """``buffered`` is kept context by context, never summed: whatever the messages, it is the sum."""
    contexts = table(max_contexts=3, max_buffered_chars=40, max_wait_s=10.0)
    queue: list[Line] = []
    for operation, context_id, text in operations:
        if operation == "text":
            try:
                queue += contexts.text(context_id, text)
            except (PayloadTooLarge, RateLimited):
                pass
        elif operation in ("flush", "end"):
            queue += getattr(contexts, operation)(context_id)
        elif operation == "cancel":
            contexts.cancel(context_id)
        elif queue:  # the speaker reaches its next line
            context, sentence = queue.pop(0)
            if context.cancelled:
                continue
            if sentence is None:
                contexts.forget(context)
            elif operation == "take":
                contexts.taken(context, sentence)
            else:
                contexts.drop(context)
    kept: list[Context] = [*contexts.open.values(), *(c for ended in contexts.ended.values() for c in ended)]
    assert contexts.buffered == sum(len(c.buffer) + c.queued_chars for c in kept)
    assert contexts.buffered <= 40
    assert len(contexts.open) <= 3
