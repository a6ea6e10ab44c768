"""Print docs/configuration.md: every field of the Serve config's ``args:`` block, from serve_app/config/.

    .venv/bin/python docs/configuration.py > docs/configuration.md

The page is read from the pydantic models Ray Serve validates ``args:`` against (AppConfig and the models
nested in it): each field's YAML path, type and constraints, default and description. tests/test_docs.py
fails when docs/configuration.md differs from what this prints.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve_app import config

COMMAND = ".venv/bin/python docs/configuration.py > docs/configuration.md"
ROOT = config.AppConfig
# AppConfig also accepts `model:` (one model) in place of `models:` (a list); the configs use `model:`.
SINGULAR = {"models": "model"}
# Meanings of fields whose Field() has no description yet (a description in serve_app/config/ wins).
FALLBACK = {
    ("LimitsConfig", "max_text_chars"): "Characters of `text` (`input` on /v1/audio/speech); past it, 413 naming "
    "the field. A WebSocket sentence is bounded by `websocket.max_buffered_chars` instead.",
    ("ModelConfig", "denoiser_model"): "The ModelScope id of the ZipEnhancer denoiser loaded with "
    "`load_denoiser: true`.",
}


def cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped, reST double backticks as Markdown's."""
    return " ".join(text.replace("``", "`").split()).replace("|", "\\|")


def doc(model: type[BaseModel]) -> str:
    text = inspect.cleandoc(model.__doc__ or "")
    return "\n".join(line.replace("``", "`") for line in text.splitlines())


# pydantic's bounds, as the page states them: (kind, its attribute, how it reads)
_BOUNDS = (
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.MinLen, "min_length", "at least {} long"),
    (annotated_types.MaxLen, "max_length", "at most {} long"),
)


def constraints(metadata: list[Any]) -> list[str]:
    return [
        form.format(getattr(item, attribute))
        for item in metadata
        for kind, attribute, form in _BOUNDS
        if isinstance(item, kind)
    ]


_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *metadata = args
        return ", ".join([type_name(base), *constraints(metadata)])
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        named = " or ".join(type_name(arg) for arg in present)
        return f"{named}, or null" if len(present) < len(args) else named
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is list:
        return f"list of {type_name(args[0])}s" if args else "list"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def field_type(info: FieldInfo) -> str:
    return ", ".join([type_name(info.annotation), *constraints(info.metadata)])


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, a list of it, or it or null)."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if type(None) in typing.get_args(annotation):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else str(value)


_DERIVED = re.compile(r"\b[Dd]efault: (.+?)(?:\.(?:\s|$)|$)")


def derived(description: str) -> str | None:
    """What a description says a null default stands for ('Default: ...', 'default: ...')."""
    match = _DERIVED.search(" ".join(description.split()))
    if match is None:
        return None
    text = match.group(1)
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1]
    return text


def default(info: FieldInfo, description: str, path: str) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return f"one entry, every field at its default (`{path}.*` below)"
        return f"`{yaml_value(value)}`" if value else f"`{'[]' if isinstance(value, list) else '{}'}` (empty)"
    value = info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "the defaults of its fields"
    if value is None:
        meaning = derived(description)
        return f"null: {meaning}" if meaning else "null"
    text = f"`{yaml_value(value)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024 and value % 1024 == 0:
        mib = value / 1024 / 1024
        if "bytes" in path and mib >= 1 and mib == int(mib):
            text += f" ({int(mib)} MiB)"
    return text


def description(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    return info.description or FALLBACK.get((model.__name__, name), "")


def sections(model: type[BaseModel], path: str) -> list[tuple[type[BaseModel], str]]:
    """This model's section and those of the models nested in it, depth first, in field order."""
    found = [(model, path)]
    for name, info in model.model_fields.items():
        inner = nested_model(info.annotation)
        if inner is not None:
            found += sections(inner, f"{path}.{SINGULAR.get(name, name)}")
    return found


def anchor(path: str) -> str:
    """GitHub's anchor of a heading that is only ``path`` in backticks."""
    return re.sub(r"[^\w\- ]", "", path.lower()).replace(" ", "-")


def table(model: type[BaseModel], path: str) -> list[str]:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        text = description(model, name, info)
        inner = nested_model(info.annotation)
        key = f"{path}.{name}"
        if inner is not None:
            target = f"{path}.{SINGULAR.get(name, name)}"
            kind = "list of sections" if typing.get_origin(info.annotation) is list else "section"
            if type(None) in typing.get_args(info.annotation):
                kind = "section, or null"
            if name in SINGULAR:
                kind = "section, or a list of sections"
            if name in SINGULAR:
                text = (
                    f"The models served: `{target}:` for one, or `{key}:` for a list of them (each its own "
                    f"deployment, chosen by the requests' `model` field). Fields: [`{target}`](#{anchor(target)})."
                    + (f" {text}" if text else "")
                )
            else:
                text = f"Fields: [`{target}`](#{anchor(target)})." + (f" {text}" if text else "")
            shown = f"`{target}` / `{key}`" if name in SINGULAR else f"`{key}`"
            rows.append(f"| {shown} | {kind} | {cell(default(info, text, target))} | {cell(text)} |")
            continue
        rows.append(f"| `{key}` | {cell(field_type(info))} | {cell(default(info, text, key))} | {cell(text)} |")
    return rows


PREAMBLE = f"""\
# Configuration

This page is generated from `serve_app/config/` by `{COMMAND}` (`make docs`); do not edit it by hand.
`tests/test_docs.py` fails when it differs from what that command prints.

A Serve config (`configs/*.yaml`) names the application (`import_path: serve_app.app:build_app`) and
passes it `args:`. Ray Serve validates `args:` against the models below before the application starts:
a misspelt or unknown field, or a value out of range, fails `serve run` / `serve deploy` with a message
naming it. Everything outside `args:` (replicas, `max_ongoing_requests`, `max_queued_requests`,
autoscaling, `http_options.request_timeout_s`, `runtime_env`, logging) is Ray Serve's own; the values
the service is tuned for are in [operations.md](operations.md#limits-and-their-defaults).

The configs in the repository: [`configs/local.yaml`](../configs/local.yaml) (`make serve`, one machine),
[`configs/prod.yaml`](../configs/prod.yaml) (GPU nodes),
[`configs/multi-model.yaml`](../configs/multi-model.yaml) (two models in one graph),
[`configs/container.yaml`](../configs/container.yaml) (the CPU image) and
[`configs/kuberay-rayservice.yaml`](../configs/kuberay-rayservice.yaml) (prod.yaml on KubeRay).

Environment variables read by the service: `{config.API_KEYS_ENV}` (API keys, comma-separated, added to
`args.access.api_keys`), `{config.ADMIN_KEYS_ENV}` (admin keys, added to `args.access.admin_keys`) and
`{config.ALLOW_ANONYMOUS_ENV}` (`true`: as `args.access.allow_anonymous: true`); see
[security.md](security.md). Weights are fetched with the Hugging Face hub's own variables (`HF_ENDPOINT`,
`HF_HUB_OFFLINE`, `HF_HOME`); see [engines.md](engines.md#which-weights-make-serve-loads).

A null default means the setting is off, unlimited or absent, unless the row says what it stands for.
"""


def render() -> str:
    out = [PREAMBLE]
    for model, path in sections(ROOT, "args"):
        out.append(f"## `{path}`\n")
        if model is ROOT:
            out.append("The block itself (`AppConfig`).\n")
        plural = [f"{path.rsplit('.', 1)[0]}.{many}" for many, one in SINGULAR.items() if path.endswith("." + one)]
        if plural:
            out.append(f"With several models, each entry of `{plural[0]}` takes these fields (`{model.__name__}`).\n")
        intro = doc(model)
        if intro:
            out.append(intro + "\n")
        out.append("\n".join(table(model, path)) + "\n")
    return "\n".join(out)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
