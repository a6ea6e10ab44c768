"""voxcpm-serve: the service from a terminal, through its public HTTP API only.

    voxcpm-serve say "你好，世界。" -o hello.wav
    voxcpm-serve say - --voice narrator --format mp3 -o story.mp3 < story.txt
    voxcpm-serve say --play "Plays while it streams."
    llm-command | voxcpm-serve say --ws - --play      (speaks each sentence as soon as it is written)
    voxcpm-serve voices add narrator reference.wav --text "参考音频的文本"
    voxcpm-serve voices add guide --description "a calm, warm female voice" --model voxcpm2
    voxcpm-serve voices list
    voxcpm-serve voices rm VOICE_ID
    voxcpm-serve adapters add my-voice lora_weights.safetensors     (a LoRA adapter from voxcpm's trainer)
    voxcpm-serve say "Fine-tuned." --adapter my-voice -o tuned.wav
    voxcpm-serve adapters list
    voxcpm-serve lexicons add brands brands.pls && voxcpm-serve say "The W3C met." --lexicon brands
    voxcpm-serve say --ssml 'Wait.<break time="1s"/>Now.'      (SSML: docs/ssml.md)
    voxcpm-serve jobs submit book.md --voice narrator --format mp3      (prints the job's id)
    voxcpm-serve jobs wait JOB_ID && voxcpm-serve jobs fetch JOB_ID -o book/
    voxcpm-serve jobs submit --items sentences.jsonl --seed 1 --timestamps word
    voxcpm-serve health

The server is ``--url``, else $VOXCPM_SERVE_URL, else http://localhost:7861; its API key ``--api-key``, else
$VOXCPM_SERVE_API_KEY. Exit codes: 0 done,
2 bad usage, 3 server unreachable, 4 request refused (the server's message is printed),
5 server error or broken stream, 6 playback unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import requests

from serve_app.cli import manage_jobs, manage_lexicons
from serve_app.cli.common import EXIT_SERVER, EXIT_UNREACHABLE, EXIT_USAGE, CliError
from serve_app.cli.manage_adapters import adapters
from serve_app.cli.manage_voices import voices
from serve_app.cli.say_http import say

DEFAULT_URL = "http://localhost:7861"
# The service's formats (serve_app.audio.codecs.AudioFormat): the command speaks only the public API, so it
# keeps their names; tests/cli/test_cli.py checks they are the service's.
FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac", "ulaw", "alaw")


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
    top.add_argument(
        "--api-key",
        default=os.environ.get("VOXCPM_SERVE_API_KEY"),
        help="the service's API key (default: $VOXCPM_SERVE_API_KEY); a service without keys serves only its own "
        "machine",
    )
    commands = top.add_subparsers(dest="command", required=True)

    speak = commands.add_parser("say", help="synthesize text (streamed)")
    speak.add_argument("text", help='the text, or "-" to read it from stdin')
    speak.add_argument("-o", "--output", help='file to write ("-": stdout); default speech.FORMAT')
    speak.add_argument("--format", choices=FORMATS, default="wav")
    speak.add_argument("--play", action="store_true", help="play while it streams (needs sounddevice)")
    speak.add_argument("--voice", dest="voice_id", help="a saved voice's id or name")
    speak.add_argument("--adapter", help="a LoRA adapter's id or name (default: the voice's, else none)")
    speak.add_argument("--reference", type=Path, help="reference audio to clone (instead of --voice)")
    speak.add_argument("--reference-text", dest="prompt_text", help="what the reference says")
    speak.add_argument("--model")
    speak.add_argument("--sample-rate", type=int)
    speak.add_argument("--cfg-value", type=float)
    speak.add_argument("--inference-timesteps", type=int)
    speak.add_argument("--max-len", type=int)
    speak.add_argument("--seed", type=int, help="the same seed and text give the same audio")
    speak.add_argument(
        "--lexicon", dest="lexicons", action="append", help="a saved pronunciation lexicon (id or name); repeatable"
    )
    speak.add_argument("--ssml", action="store_true", help="the text is SSML (wrapped in <speak> if it has none)")
    speak.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    speak.add_argument(
        "--ws",
        action="store_true",
        help="over the WebSocket: stdin is spoken sentence by sentence as it arrives",
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
    add.add_argument("--adapter", help="a LoRA adapter (id or name) requests naming the voice speak with")
    actions.add_parser("list", help="list saved voices")
    remove = actions.add_parser("rm", help="delete saved voices")
    remove.add_argument("voice_ids", nargs="+")
    voice.set_defaults(run=voices)

    adapter = commands.add_parser("adapters", help="manage LoRA adapters")
    adapter_actions = adapter.add_subparsers(dest="action", required=True)
    upload = adapter_actions.add_parser("add", help="upload an adapter; prints its id")
    upload.add_argument("name")
    upload.add_argument("weights", type=Path, help="voxcpm's lora_weights.safetensors (or lora_weights.ckpt)")
    upload.add_argument("--model", help="the model it was trained for (default: the default)")
    adapter_actions.add_parser("list", help="list adapters and each model's LoRA shape")
    drop = adapter_actions.add_parser("rm", help="delete uploaded adapters")
    drop.add_argument("adapter_ids", nargs="+")
    adapter.set_defaults(run=adapters)

    manage_lexicons.add_parser(commands)
    manage_jobs.add_parser(commands, FORMATS)
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
