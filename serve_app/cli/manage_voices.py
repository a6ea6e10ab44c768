"""``voxcpm-serve voices add | list | rm``: saved voices over ``/api/voices``."""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from serve_app.cli.common import EXIT_USAGE, CliError, auth, call


def voices(args: argparse.Namespace) -> None:
    base = f"{args.url}/api/voices"
    if args.action == "add":
        if (args.audio is None) == (args.description is None):
            raise CliError("give a recording (AUDIO with --text) or --description, not both", EXIT_USAGE)
        fields = {"name": args.name, "text": args.text, "description": args.description, "model": args.model}
        fields["adapter"] = args.adapter
        uploads = {"audio": args.audio, "reference_audio": args.reference}
        with ExitStack() as files:
            opened = {field: files.enter_context(open(path, "rb")) for field, path in uploads.items() if path}
            data = {field: value for field, value in fields.items() if value is not None}
            voice = call("POST", base, args.timeout, data=data, files=opened, headers=auth(args)).json()
        print(voice["voice_id"])
    elif args.action == "list":
        for voice in call("GET", base, args.timeout, headers=auth(args)).json()["voices"]:
            made = f"designed: {voice['description']}" if voice.get("kind") == "designed" else voice["text"]
            print(f"{voice['voice_id']}  {voice['name']:<20} {voice['seconds']:5.1f} s  {made}")
    elif args.action == "rm":
        for voice_id in args.voice_ids:
            call("DELETE", f"{base}/{voice_id}", args.timeout, headers=auth(args))
