"""``voxcpm-serve say``: text to speech over ``POST /api/tts/stream``, written to a file, stdout or played as
it streams (``--ws``: over the WebSocket, ``say_ws.py``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, BinaryIO

import requests

from serve_app.cli.common import EXIT_SERVER, SETTINGS, CliError, Progress, auth, call, pcm_player
from serve_app.cli.say_ws import say_ws

WAV_HEADER_BYTES = 44


def say(args: argparse.Namespace) -> None:
    if args.ws:
        say_ws(args)
        return
    text = sys.stdin.read() if args.text == "-" else args.text
    if args.ssml and not text.lstrip().startswith(("<speak", "<?xml")):
        text = f"<speak>{text}</speak>"
    fmt = "wav" if args.play else args.format
    form: dict[str, Any] = {"text": text, "format": fmt}
    if args.lexicons:
        form["lexicons"] = ",".join(args.lexicons)
    for name in (*SETTINGS, "prompt_text"):
        if getattr(args, name) is not None:
            form[name] = getattr(args, name)
    output = args.output or (None if args.play else f"speech.{args.format}")
    with ExitStack() as stack:
        files = {"prompt_audio": stack.enter_context(open(args.reference, "rb"))} if args.reference else None
        response = call(
            "POST", f"{args.url}/api/tts/stream", args.timeout, data=form, files=files, stream=True, headers=auth(args)
        )
        rate = int(response.headers.get("x-sample-rate", "0"))
        sink: BinaryIO | None = None
        if output == "-":
            sink = sys.stdout.buffer
        elif output:
            sink = stack.enter_context(open(output, "wb"))
        player = stack.enter_context(pcm_player(rate)) if args.play else None
        progress = Progress(args.quiet)
        for piece, audio in _pieces(response, fmt):
            if sink:
                sink.write(piece)
            if player is not None:
                player.write(audio)
            progress.add(len(piece), len(audio) / 2 / rate)
        progress.done(f"wrote {output}" if output else "played")


def _pieces(response: requests.Response, fmt: str) -> Iterator[tuple[bytes, bytes]]:
    """(bytes as received, the PCM16 audio in them) for wav/pcm; a stream cut short is an error."""
    header = WAV_HEADER_BYTES if fmt == "wav" else 0
    try:
        for piece in response.iter_content(chunk_size=None):
            skip = min(header, len(piece))
            header -= skip
            yield piece, piece[skip:] if fmt in ("wav", "pcm") else b""
    except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
        raise CliError(f"the stream broke off: {exc}", EXIT_SERVER) from None
