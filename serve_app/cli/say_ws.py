"""``voxcpm-serve say --ws``: text from stdin spoken as it arrives, over ``/api/tts/ws``.

For piping a language model's output: ``llm "..." | voxcpm-serve say --ws - --play``. Stdin is read
as it comes (not line by line), each piece sent as it is read; the server starts each sentence as
soon as it is complete. The audio is PCM: written to a WAV file (sizes filled in at the end), to
stdout as raw PCM (``-o -``), or played.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import os
import sys
import threading
import wave
from collections.abc import Iterator
from typing import Any, BinaryIO

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from serve_app.cli.common import (
    EXIT_REFUSED,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    SETTINGS,
    CliError,
    Progress,
    auth,
    pcm_player,
)

READ_BYTES = 4096


def say_ws(args: argparse.Namespace) -> None:
    if args.reference or args.format != "wav":
        raise CliError("--ws speaks with --voice or the first sentence's voice, into WAV or --play", EXIT_USAGE)
    if args.ssml:
        raise CliError("--ssml is for HTTP requests: the WebSocket does not read SSML", EXIT_USAGE)
    settings = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    init: dict[str, Any] = {"type": "init", **settings, **({"lexicons": args.lexicons} if args.lexicons else {})}
    output = args.output or (None if args.play else "speech.wav")
    with _connected(args) as ws, contextlib.ExitStack() as stack:
        ws.send(json.dumps(init))
        ready = _event(ws)
        rate = ready["sample_rate"]
        write = _sink(stack, output, rate)
        player = stack.enter_context(pcm_player(rate)) if args.play else None
        threading.Thread(target=_send_text, args=(ws, args.text), daemon=True).start()
        progress = Progress(args.quiet)
        for audio in _audio(ws):
            if write:
                write(audio)
            if player is not None:
                player.write(audio)
            progress.add(len(audio), len(audio) / 2 / rate)
        progress.done(f"wrote {output}" if output else "played")


@contextlib.contextmanager
def _connected(args: argparse.Namespace) -> Iterator[ClientConnection]:
    url = args.url.replace("http", "ws", 1).rstrip("/") + "/api/tts/ws"
    try:
        ws = connect(url, additional_headers=auth(args), open_timeout=args.timeout, max_size=None)
    except InvalidStatus as refused:
        status, message = refused.response.status_code, _message(refused.response.body)
        raise CliError(f"HTTP {status}: {message}", EXIT_REFUSED) from None
    except (OSError, InvalidURI, TimeoutError) as exc:
        raise CliError(f"cannot reach {args.url}: {exc}", EXIT_UNREACHABLE) from None
    with ws:
        yield ws


def _send_text(ws: ClientConnection, text: str) -> None:
    """The text (stdin: each piece as it is read), then ``end``."""
    with contextlib.suppress(ConnectionClosed):
        if text != "-":
            ws.send(json.dumps({"type": "text", "text": text}))
        else:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two reads
            while chunk := os.read(sys.stdin.fileno(), READ_BYTES):
                if piece := decoder.decode(chunk):
                    ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "end"}))


def _audio(ws: ClientConnection) -> Iterator[bytes]:
    """The PCM frames until ``done``; an ``error`` event is the server's refusal."""
    try:
        for message in ws:
            if isinstance(message, bytes):
                yield message
                continue
            event = json.loads(message)
            if event["type"] == "done":
                return
            if event["type"] == "error":
                field = f" (field: {event['field']})" if event.get("field") else ""
                raise CliError(f"{event['code']}: {event['message']}{field}", EXIT_REFUSED)
    except ConnectionClosed as exc:
        raise CliError(f"the socket closed before the end: {exc}", EXIT_SERVER) from None
    raise CliError("the socket closed before the end", EXIT_SERVER)


def _event(ws: ClientConnection) -> dict:
    try:
        event = json.loads(ws.recv())
    except ConnectionClosed as exc:
        raise CliError(f"the socket closed: {exc}", EXIT_SERVER) from None
    if event["type"] == "error":
        field = f" (field: {event['field']})" if event.get("field") else ""
        raise CliError(f"{event['code']}: {event['message']}{field}", EXIT_REFUSED)
    return event


def _sink(stack: contextlib.ExitStack, output: str | None, rate: int) -> Any:
    """Where the PCM goes: a WAV file, raw to stdout ("-"), or nowhere."""
    if output is None:
        return None
    if output == "-":
        stdout: BinaryIO = sys.stdout.buffer
        return lambda audio: (stdout.write(audio), stdout.flush())
    wav = stack.enter_context(wave.open(output, "wb"))
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(rate)
    return wav.writeframes


def _message(body: bytes | None) -> str:
    try:
        error = json.loads(body or b"")["error"]
        return error["message"] + (f" (field: {error['field']})" if error.get("field") else "")
    except (ValueError, KeyError, TypeError):
        return (body or b"").decode(errors="replace")[:200]
