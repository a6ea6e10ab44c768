"""Soak of ``/api/tts/ws``: many short conversations, watching the replicas for leaks.

Each conversation is one of: two sentences then ``end`` (waits for ``done``), a barge-in
(``cancel`` after the first audio), a client that vanishes mid-sentence (no close frame), a bad
message (closed 4400), and one that never sends ``init`` within a short wait before closing itself.
Every ``--sample-every`` conversations the ingress and model replicas' memory, threads and open
files are sampled (as ``soak.py`` does); flat lines mean sockets leak nothing.

    .venv/bin/python benchmarks/ws_soak.py --conversations 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Callable

from common import local_service, save, table
from soak import drive, plot
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

SENTENCES = ["你好，我是语音助手。", "Today is sunny."]


def opened(url: str) -> ClientConnection:
    ws = connect(url, open_timeout=60, max_size=None).__enter__()  # closed by its caller, or vanished
    ws.send(json.dumps({"type": "init", "max_len": 20}))
    assert json.loads(ws.recv(timeout=60))["type"] == "ready"
    return ws


def first_audio(ws: ClientConnection) -> None:
    while not isinstance(ws.recv(timeout=60), bytes):
        pass


def conversations(url: str) -> list[Callable[[], str]]:
    """The kinds of conversation, each returning how it ended."""

    def whole() -> str:
        with opened(url) as ws:
            for sentence in SENTENCES:
                ws.send(json.dumps({"type": "text", "text": sentence}))
            ws.send(json.dumps({"type": "end"}))
            while True:
                message = ws.recv(timeout=120)
                if isinstance(message, str) and json.loads(message)["type"] == "done":
                    return "done"

    def barge_in() -> str:
        with opened(url) as ws:
            ws.send(json.dumps({"type": "text", "text": "这是一段要被打断的很长的话。"}))
            first_audio(ws)
            ws.send(json.dumps({"type": "cancel"}))
            while True:
                message = ws.recv(timeout=60)
                if isinstance(message, str) and json.loads(message)["type"] == "cancelled":
                    return "cancelled"

    def vanish() -> str:
        ws = opened(url)
        ws.send(json.dumps({"type": "text", "text": "说到一半就走了。"}))
        first_audio(ws)
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
        return "vanished"

    def bad_message() -> str:
        with opened(url) as ws:
            ws.send("not json")
            try:
                while True:
                    ws.recv(timeout=30)
            except ConnectionClosed as closed:
                return str(closed.rcvd.code if closed.rcvd else "no close frame")

    def no_init() -> str:
        with connect(url, open_timeout=60):
            time.sleep(0.2)
        return "left before init"

    return [whole, barge_in, vanish, whole, bad_message, no_init]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-every", type=int, default=30)
    args = parser.parse_args()
    with local_service() as base:
        kinds = itertools.cycle(conversations(base.replace("http", "ws", 1) + "/api/tts/ws"))
        # counted, the soak goes on
        outcomes, points, wall = drive(kinds, args.conversations, args.clients, args.sample_every, Exception)
    save("ws_soak", {"points": points, "outcomes": dict(outcomes)}, report(points, outcomes, wall))
    plot(points, "ws_soak", "conversations")


def report(points: list[dict], outcomes: Counter, wall: float) -> str:
    first, last = points[1], points[-1]  # points[0] is before any conversation
    rows = [
        [key, f"{first[key]:.1f}", f"{last[key]:.1f}", f"{last[key] - first[key]:+.1f}"]
        for key in sorted(first)
        if key not in ("requests", "t_s")
    ]
    return (
        f"# WebSocket soak: {last['requests']} conversations in {wall:.0f} s\n\n"
        "Conversations to `done`, barge-ins, clients vanishing mid-sentence, bad messages (4400) and clients "
        f"leaving before `init`; tiny synthetic model on a 2-core CPU. Growth from the sample after "
        f"{first['requests']} conversations to the last.\n\n"
        + table(["measure", "after warm-up", "at the end", "growth"], rows)
        + "\nOutcomes: "
        + ", ".join(f"{outcome}: {count}" for outcome, count in sorted(outcomes.items()))
        + ".\n"
    )


if __name__ == "__main__":
    main()
