"""What one WebSocket ``text`` message costs the ingress, against how many contexts are open on the socket and
how long the buffer it lands in is: a message should cost what it adds, whatever came before it.

    .venv/bin/python benchmarks/ws_message_cost.py [--messages 2000]

In-process (no Ray, no model): the conversation of ``serve_app/ingress/ws.py`` with a socket that
swallows what it is sent, fed messages that complete no sentence (so nothing is spoken), timed per
message. Results: benchmarks/results/ws_message_cost.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from common import png, save, table

from serve_app.config import WebSocketConfig
from serve_app.ingress.ws import Conversation
from serve_app.ingress.ws_contexts import ContextTable
from serve_app.ingress.ws_messages import parse

CONTEXTS = (1, 10, 100)
BUFFERS = (100, 1000, 4900)  # characters already waiting in the context (the default limit is 5000)


class Socket:
    """What the conversation needs of a WebSocket: headers, and somewhere to send (nothing is kept)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def send_text(self, text: str) -> None:
        return None


def conversation() -> Conversation:
    limits = WebSocketConfig(max_buffered_chars=10**7, max_contexts=max(CONTEXTS))
    talk = Conversation(Socket(), SimpleNamespace(), SimpleNamespace(), limits)  # type: ignore[arg-type]
    talk.contexts = ContextTable(limits.max_contexts, limits.max_buffered_chars, max_wait_s=0.5)
    talk.speaker = SimpleNamespace(say=lambda lines: None)  # type: ignore[assignment]  # nothing completes a sentence
    return talk


async def per_message_us(talk: Conversation, messages: list[str]) -> float:
    parsed = [parse(message) for message in messages]
    started = time.perf_counter()
    for message in parsed:
        await talk._on_message(message)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / len(parsed) * 1e6


def text(context: str, piece: str) -> str:
    return json.dumps({"type": "text", "context_id": context, "text": piece})


async def by_contexts(count: int, messages: int) -> float:
    talk = conversation()
    for index in range(count):
        await talk._on_message(parse(text(str(index), "open ")))  # type: ignore[arg-type]
    return await per_message_us(talk, [text(str(index % count), "word ") for index in range(messages)])


async def by_buffer(length: int, filler: str, messages: int) -> float:
    talk = conversation()
    await talk._on_message(parse(text("0", filler * length)))  # type: ignore[arg-type]
    return await per_message_us(talk, [text("0", "abcd")] * messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args()

    def median(make: Any) -> float:
        return statistics.median(asyncio.run(make()) for _ in range(args.repeat))

    contexts = {count: median(lambda count=count: by_contexts(count, args.messages)) for count in CONTEXTS}
    words = {length: median(lambda length=length: by_buffer(length, "w", args.messages)) for length in BUFFERS}
    periods = {length: median(lambda length=length: by_buffer(length, ".", args.messages)) for length in BUFFERS}
    rows = [[f"{count} open context(s)", "", f"{us:.1f}"] for count, us in contexts.items()]
    rows += [["1 context", f"{length} letters", f"{us:.1f}"] for length, us in words.items()]
    rows += [["1 context", f"{length} periods", f"{us:.1f}"] for length, us in periods.items()]
    markdown = (
        "# One WebSocket `text` message, in-process (benchmarks/ws_message_cost.py)\n\n"
        f"Median of {args.repeat} rounds of {args.messages} messages; microseconds per message.\n\n"
        + table(["socket", "buffer before", "µs per message"], rows)
    )
    save(
        "ws_message_cost",
        {
            "messages": args.messages,
            "repeat": args.repeat,
            "by_contexts": contexts,
            "by_buffer": {"letters": words, "periods": periods},
        },
        markdown,
    )
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(list(contexts), list(contexts.values()), marker="o")
    left.set(xscale="log", xlabel="open contexts on the socket", ylabel="µs per message", ylim=(0, None))
    right.plot(list(words), list(words.values()), marker="o", label="letters")
    right.plot(list(periods), list(periods.values()), marker="o", label="periods")
    right.set(xlabel="characters waiting in the context", ylim=(0, None))
    right.legend()
    png(figure, "ws_message_cost")


if __name__ == "__main__":
    main()
