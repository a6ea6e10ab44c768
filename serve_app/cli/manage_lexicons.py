"""``voxcpm-serve lexicons add | list | rm``: pronunciation lexicons over ``/api/lexicons``."""

from __future__ import annotations

import argparse

from serve_app.cli.common import auth, call


def lexicons(args: argparse.Namespace) -> None:
    base = f"{args.url}/api/lexicons"
    if args.action == "add":
        with open(args.file, "rb") as file:
            saved = call("POST", base, args.timeout, data={"name": args.name}, files={"file": file}, headers=auth(args))
        lexicon = saved.json()
        skipped = f" ({lexicon['skipped']} pronunciations in other alphabets skipped)" if lexicon["skipped"] else ""
        print(f"{lexicon['lexicon_id']}  {lexicon['entries']} entries{skipped}")
    elif args.action == "list":
        for lexicon in call("GET", base, args.timeout, headers=auth(args)).json()["lexicons"]:
            owner = lexicon["owner"] or "shared"
            print(f"{lexicon['lexicon_id']}  {lexicon['name']:<20} {lexicon['entries']:>6} entries  {owner}")
    elif args.action == "rm":
        for lexicon_id in args.lexicon_ids:
            call("DELETE", f"{base}/{lexicon_id}", args.timeout, headers=auth(args))


def add_parser(commands: argparse._SubParsersAction) -> None:
    lexicon = commands.add_parser("lexicons", help="manage pronunciation lexicons")
    actions = lexicon.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="save a lexicon (a W3C PLS file, or JSON entries); prints its id")
    add.add_argument("name")
    add.add_argument("file", help='a .pls file, or JSON: [{"grapheme": "W3C", "alias": "..."}, ...]')
    actions.add_parser("list", help="list lexicons")
    remove = actions.add_parser("rm", help="delete lexicons")
    remove.add_argument("lexicon_ids", nargs="+")
    lexicon.set_defaults(run=lexicons)
