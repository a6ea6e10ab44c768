"""voxcpm-serve: the service from a terminal, through its public HTTP API only.

    voxcpm-serve say "你好，世界。" -o hello.wav
    voxcpm-serve say - --voice narrator --format mp3 -o story.mp3 < story.txt
    voxcpm-serve say --play "Plays while it streams."
    llm-command | voxcpm-serve say --ws - --play      (speaks each sentence as soon as it is written)
    voxcpm-serve voices add narrator reference.wav --text "参考音频的文本"
    voxcpm-serve voices add guide --description "a calm, warm female voice" --model voxcpm2
    voxcpm-serve voices list
    voxcpm-serve voices rm VOICE_ID
    voxcpm-serve health

The server is ``--url``, else $VOXCPM_SERVE_URL, else http://localhost:7861. Exit codes: 0 done,
2 bad usage, 3 server unreachable, 4 request refused (the server's message is printed),
5 server error or broken stream, 6 playback unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import requests

DEFAULT_URL = "http://localhost:7861"
FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
WAV_HEADER_BYTES = 44
EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_SERVER, EXIT_PLAYBACK = 2, 3, 4, 5, 6


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _checked(response: requests.Response) -> requests.Response:
    """The response, or a CliError carrying the server's own words."""
    if response.ok:
        return response
    try:
        error = response.json()["error"]
        message = f"{error['message']}" + (f" (field: {error['field']})" if error.get("field") else "")
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason
    code = EXIT_REFUSED if response.status_code < 500 else EXIT_SERVER
    raise CliError(f"HTTP {response.status_code}: {message}", code)


def _call(method: str, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return _checked(requests.request(method, url, timeout=timeout, **kwargs))
    except requests.ConnectionError:
        raise CliError(f"cannot reach {url.split('/api')[0].split('/health')[0]}", EXIT_UNREACHABLE) from None


class Progress:
    """One status line on stderr while audio arrives (only on a terminal), and a summary at the end."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._live = sys.stderr.isatty() and not quiet
        self.started = time.perf_counter()
        self.first_audio: float | None = None
        self.audio_s = 0.0  # known for wav and pcm
        self.bytes = 0

    def add(self, nbytes: int, audio_s: float) -> None:
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.started
        self.audio_s += audio_s
        self.bytes += nbytes
        if self._live:
            got = f"{self.audio_s:6.1f} s of audio" if self.audio_s else f"{self.bytes / 1024:8.0f} KiB"
            print(f"\r{got} in {time.perf_counter() - self.started:5.1f} s", end="", file=sys.stderr, flush=True)

    def done(self, what: str) -> None:
        if self._live:
            print("\r\033[K", end="", file=sys.stderr)
        if self._quiet:
            return
        elapsed = time.perf_counter() - self.started
        got = f"{self.audio_s:.2f} s of audio" if self.audio_s else f"{self.bytes} bytes"
        rtf = f", real-time factor {elapsed / self.audio_s:.2f}" if self.audio_s else ""
        first = f", first bytes after {1e3 * self.first_audio:.0f} ms" if self.first_audio is not None else ""
        print(f"{what}: {got} in {elapsed:.2f} s{first}{rtf}", file=sys.stderr)


def _pcm_player(sample_rate: int) -> Any:
    """A PortAudio output stream (a context manager that starts and stops it)."""
    try:
        import sounddevice
    except (ImportError, OSError):  # not installed, or PortAudio missing
        raise CliError("--play needs sounddevice and PortAudio: pip install sounddevice", EXIT_PLAYBACK) from None
    try:
        return sounddevice.RawOutputStream(samplerate=sample_rate, channels=1, dtype="int16")
    except Exception as exc:  # noqa: BLE001 - PortAudio raises its own types when no device exists
        raise CliError(f"no audio output device: {exc}", EXIT_PLAYBACK) from None


def say(args: argparse.Namespace) -> None:
    if args.ws:
        from serve_app.cli_ws import say_ws  # imports this module: imported here, when asked for

        say_ws(args)
        return
    text = sys.stdin.read() if args.text == "-" else args.text
    fmt = "wav" if args.play else args.format
    form: dict[str, Any] = {"text": text, "format": fmt}
    for name in ("model", "voice_id", "sample_rate", "cfg_value", "inference_timesteps", "max_len", "prompt_text"):
        if getattr(args, name) is not None:
            form[name] = getattr(args, name)
    output = args.output or (None if args.play else f"speech.{args.format}")
    with ExitStack() as stack:
        files = {"prompt_audio": stack.enter_context(open(args.reference, "rb"))} if args.reference else None
        response = _call("POST", f"{args.url}/api/tts/stream", args.timeout, data=form, files=files, stream=True)
        rate = int(response.headers.get("x-sample-rate", "0"))
        sink: BinaryIO | None = None
        if output == "-":
            sink = sys.stdout.buffer
        elif output:
            sink = stack.enter_context(open(output, "wb"))
        player = stack.enter_context(_pcm_player(rate)) if args.play else None
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


def voices(args: argparse.Namespace) -> None:
    base = f"{args.url}/api/voices"
    if args.action == "add":
        if (args.audio is None) == (args.description is None):
            raise CliError("give a recording (AUDIO with --text) or --description, not both", EXIT_USAGE)
        fields = {"name": args.name, "text": args.text, "description": args.description, "model": args.model}
        uploads = {"audio": args.audio, "reference_audio": args.reference}
        with ExitStack() as files:
            opened = {field: files.enter_context(open(path, "rb")) for field, path in uploads.items() if path}
            data = {field: value for field, value in fields.items() if value is not None}
            voice = _call("POST", base, args.timeout, data=data, files=opened).json()
        print(voice["voice_id"])
    elif args.action == "list":
        for voice in _call("GET", base, args.timeout).json()["voices"]:
            made = f"designed: {voice['description']}" if voice.get("kind") == "designed" else voice["text"]
            print(f"{voice['voice_id']}  {voice['name']:<20} {voice['seconds']:5.1f} s  {made}")
    elif args.action == "rm":
        for voice_id in args.voice_ids:
            _call("DELETE", f"{base}/{voice_id}", args.timeout)


def health(args: argparse.Namespace) -> None:
    try:
        response = requests.get(f"{args.url}/health", timeout=args.timeout)
    except requests.ConnectionError:
        raise CliError(f"cannot reach {args.url}", EXIT_UNREACHABLE) from None
    print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    if response.status_code != 200:
        raise CliError("the service is not ready", EXIT_SERVER)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="voxcpm-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--url", default=os.environ.get("VOXCPM_SERVE_URL", DEFAULT_URL))
    top.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server")
    commands = top.add_subparsers(dest="command", required=True)

    speak = commands.add_parser("say", help="synthesize text (streamed)")
    speak.add_argument("text", help='the text, or "-" to read it from stdin')
    speak.add_argument("-o", "--output", help='file to write ("-": stdout); default speech.FORMAT')
    speak.add_argument("--format", choices=FORMATS, default="wav")
    speak.add_argument("--play", action="store_true", help="play while it streams (needs sounddevice)")
    speak.add_argument("--voice", dest="voice_id", help="a saved voice's id or name")
    speak.add_argument("--reference", type=Path, help="reference audio to clone (instead of --voice)")
    speak.add_argument("--reference-text", dest="prompt_text", help="what the reference says")
    speak.add_argument("--model")
    speak.add_argument("--sample-rate", type=int)
    speak.add_argument("--cfg-value", type=float)
    speak.add_argument("--inference-timesteps", type=int)
    speak.add_argument("--max-len", type=int)
    speak.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    speak.add_argument(
        "--ws",
        action="store_true",
        help="over the WebSocket: stdin is spoken sentence by sentence as it arrives "
        "(API key from $VOXCPM_SERVE_API_KEY)",
    )
    speak.set_defaults(run=say)

    voice = commands.add_parser("voices", help="manage saved voices")
    actions = voice.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="save a voice; prints its id")
    add.add_argument("name")
    add.add_argument("audio", type=Path, nargs="?", help="the recording (not with --description)")
    add.add_argument("--text", help="what the recording says (with --description: what the sample says)")
    add.add_argument("--reference", type=Path, help="VoxCPM2: an isolated reference recording kept beside it")
    add.add_argument("--description", help="VoxCPM2: design the voice from this description instead")
    add.add_argument("--model", help="with --description: the VoxCPM2 model that designs it")
    actions.add_parser("list", help="list saved voices")
    remove = actions.add_parser("rm", help="delete saved voices")
    remove.add_argument("voice_ids", nargs="+")
    voice.set_defaults(run=voices)

    commands.add_parser("health", help="the service's state").set_defaults(run=health)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except CliError as exc:
        print(f"voxcpm-serve: {exc}", file=sys.stderr)
        return exc.code
    except FileNotFoundError as exc:
        print(f"voxcpm-serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
