"""``voxcpm-serve adapters add | list | rm``: LoRA adapters over ``/api/adapters``."""

from __future__ import annotations

import argparse

from serve_app.cli.common import auth, call


def adapters(args: argparse.Namespace) -> None:
    base = f"{args.url}/api/adapters"
    if args.action == "add":
        with open(args.weights, "rb") as weights:
            data = {"name": args.name, **({"model": args.model} if args.model else {})}
            adapter = call("POST", base, args.timeout, data=data, files={"weights": weights}, headers=auth(args))
        print(adapter.json()["adapter_id"])
    elif args.action == "list":
        listing = call("GET", base, args.timeout, headers=auth(args)).json()
        for adapter in listing["adapters"]:
            owner = adapter["owner"] or "shared"
            size = f"{adapter['bytes'] / 2**20:7.1f} MiB" if adapter["source"] == "upload" else "   (config)"
            print(f"{adapter['adapter_id']}  {adapter['name']:<20} {adapter['model']:<16} {size}  {owner}")
        for model, shape in listing["models"].items():
            print(
                f"model {model}: "
                + ("no adapters" if shape is None else ", ".join(f"{k} {v}" for k, v in shape.items()))
            )
    elif args.action == "rm":
        for adapter_id in args.adapter_ids:
            call("DELETE", f"{base}/{adapter_id}", args.timeout, headers=auth(args))
