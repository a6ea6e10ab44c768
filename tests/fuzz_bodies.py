"""The fuzz campaign's adapter files and multipart bodies (tests/fuzz_corpus.py makes the audio and the cases):
a valid LoRA adapter of the served layout as safetensors or a torch.save zip, then mutated where a parser
trusts it (header length, JSON header, dtypes, offsets, zip records, pickle); and form bodies broken where a
multipart parser trusts them (boundaries, part headers, names, charsets, counts, content types)."""

from __future__ import annotations

import io
import json
import random
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tests.fuzz_corpus import Case, Layout

Tensors = dict[str, tuple[str, tuple[int, ...], bytes]]  # name -> (safetensors dtype, shape, raw little-endian)
EXTREMES = (0, 1, 7, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1)


def adapter_tensors(layout: Layout, rng: random.Random, dtype: str = "F32") -> Tensors:
    """Random weights of the layout (small, finite) in ``dtype``: F32, F16 or BF16 (float32's top half)."""
    numbers = np.random.default_rng(rng.getrandbits(32))
    made: Tensors = {}
    for name, shape in sorted(layout.items()):
        values = (numbers.standard_normal(shape) * 0.05).astype(np.float32)
        raw = {"F32": values, "F16": values.astype(np.float16), "BF16": (values.view(np.uint32) >> 16)}[dtype]
        made[name] = (dtype, shape, raw.astype("<u2" if dtype == "BF16" else raw.dtype).tobytes())
    return made


def safetensors_bytes(header: dict[str, Any], blobs: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + blobs


def safetensors_parts(tensors: Tensors) -> tuple[dict[str, Any], bytes]:
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset, blobs = offset + len(raw), [*blobs, raw]
    return header, b"".join(blobs)


def header_mutation(header: dict[str, Any], rng: random.Random) -> str:
    """One of the JSON header's claims changed in place: what the refusal must be read from."""
    name = rng.choice(sorted(header))
    entry = header[name]
    start, end = entry["data_offsets"]
    shape = entry["shape"]
    what = rng.choice(["dtype", "shape", "offsets", "drop", "extra", "rename", "entry", "metadata"])
    if what == "dtype":
        entry["dtype"] = rng.choice(["F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "BF16", "F16", "f32", "", 7, None])
    elif what == "shape":
        entry["shape"] = rng.choice([[0, *shape[1:]], [], [-1, *shape[1:]], [2**31, 2**31], [2**62, 4], shape[::-1]])
    elif what == "offsets":
        entry["data_offsets"] = rng.choice([[end, start], [0, 2**63], [start, start], [-8, end], [start, end + 1]])
    elif what == "drop":
        del header[name]
    elif what == "extra":
        header[f"{name}.extra"] = dict(entry)
    elif what == "rename":
        header[name.replace("lora", "lora_x", 1)] = header.pop(name)
    elif what == "entry":
        header[name] = rng.choice(["x", [], None, 1, {"dtype": "F32"}])
    else:
        header["__metadata__"] = rng.choice([{"format": "pt"}, {"x": 1}, "text", {"k" * 100: "v" * 60_000}])
    return f"{what} of {name!r}" if what != "metadata" else f"__metadata__ := {str(header['__metadata__'])[:40]}"


BAD_HEADERS = (b'{"a": ', b"\xff\xfe{}", b"[" * 50_000, b"{}", b"[]", b"null", b'{"x": 1e999}', b"\xef\xbb\xbf{}")


def safetensors_case(layout: Layout, rng: random.Random, valid: bool) -> tuple[bytes, str]:
    dtype = rng.choice(["F32", "F32", "F16", "BF16"])
    header, blobs = safetensors_parts(adapter_tensors(layout, rng, dtype))
    if valid:
        return safetensors_bytes(header, blobs), f"safetensors {dtype}, valid"
    what = rng.choice(["json", "json", "length", "text", "duplicate key", "nan", "truncate", "flip", "trailing"])
    if what == "json":
        return safetensors_bytes(header, blobs), f"safetensors {dtype}, {header_mutation(header, rng)}"
    if what == "length":
        length = rng.choice([*EXTREMES, len(json.dumps(header)) + rng.choice([-9, -1, 1, 9])])
        return safetensors_bytes(header, blobs, length), f"safetensors {dtype}, header length := {length}"
    if what == "text":
        text = rng.choice(BAD_HEADERS)
        return struct.pack("<Q", len(text)) + text + blobs, f"safetensors, header {text[:12]!r}"
    if what == "duplicate key":
        first = json.dumps({next(iter(header)): header[next(iter(header))]})[1:-1]
        text = ("{" + first + ", " + json.dumps(header)[1:]).encode()
        return struct.pack("<Q", len(text)) + text + blobs, "safetensors, a key twice in the header"
    data = safetensors_bytes(header, blobs)
    start = 8 + int.from_bytes(data[:8], "little")
    if what == "nan":
        at = start + 4 * rng.randrange((len(data) - start) // 4)
        data = data[:at] + (b"\x00\x00\xc0\x7f" if dtype == "F32" else b"\xc0\x7f\xc0\x7f") + data[at + 4 :]
        return data, f"safetensors {dtype}, NaN at {at}"
    return raw_damage(data, rng, what, start, f"safetensors {dtype}")


def raw_damage(data: bytes, rng: random.Random, what: str, header_end: int, label: str) -> tuple[bytes, str]:
    """Truncated, flipped (in the header or anywhere) or with bytes after the end."""
    if what == "truncate":
        cut = rng.randrange(rng.choice([16, header_end, len(data)]))
        return data[:cut], f"{label}, truncated at {cut}"
    if what == "trailing":
        return data + bytes(rng.choice([1, 64, 4096])), f"{label}, trailing bytes"
    mutated = bytearray(data)
    places = sorted(rng.randrange(rng.choice([header_end, len(data)])) for _ in range(rng.randint(1, 8)))
    for place in places:
        mutated[place] ^= rng.randint(1, 255)
    return bytes(mutated), f"{label}, flipped bytes at {places}"


def ckpt_bytes(content: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def torch_tensors(tensors: Tensors, dtype: str | None = None) -> OrderedDict[str, Any]:
    import torch

    made = OrderedDict()
    for name, (_, shape, raw) in tensors.items():
        made[name] = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)
        made[name] = made[name].to(getattr(torch, dtype)) if dtype else made[name]
    return made


Members = list[tuple[str, bytes, int]]  # (name, bytes, zipfile compression)


def rezipped(data: bytes, members: Members) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for name, payload, method in members:
            archive.writestr(zipfile.ZipInfo(name), payload, compress_type=method)
    return buffer.getvalue()


EVIL_PICKLES = (
    b"cos\nsystem\n(S'true'\ntR.",
    b"cbuiltins\neval\n(S'1'\ntR.",
    b"(" * 100_000 + b".",
    b"\x80\x02]q\x00.",
)


def ckpt_case(layout: Layout, rng: random.Random, valid: bool) -> tuple[bytes, str]:
    tensors = torch_tensors(adapter_tensors(layout, rng))
    if valid:
        wrapped = rng.choice([tensors, {"state_dict": tensors}])
        return ckpt_bytes(wrapped), f"ckpt{' in state_dict' if wrapped is not tensors else ''}, valid"
    what = rng.choice(["content", "deflate", "extra", "drop", "duplicate", "pickle", "end", "damage"])
    if what == "content":
        content = rng.choice(["float64", "int64", "list", "ints", "nested"])
        made = {
            "float64": lambda: torch_tensors(adapter_tensors(layout, rng), "float64"),
            "int64": lambda: torch_tensors(adapter_tensors(layout, rng), "int64"),
            "list": lambda: list(tensors.values()),
            "ints": lambda: dict.fromkeys(tensors, 1),
            "nested": lambda: {"a": {"b": tensors}},
        }[content]()
        return ckpt_bytes(made), f"ckpt of {content}"
    data = ckpt_bytes(tensors)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members: Members = [(m.filename, archive.read(m), zipfile.ZIP_STORED) for m in archive.infolist()]
    prefix = members[0][0].split("/", 1)[0]
    pick = rng.randrange(len(members))
    if what == "deflate":
        deflated = [i == pick or rng.random() < 0.5 for i in range(len(members))]
        members = [(n, p, zipfile.ZIP_DEFLATED if d else m) for (n, p, m), d in zip(members, deflated, strict=True)]
    elif what == "extra":
        extra = rng.choice(["evil.py", "data/999", "../escape", "data.pkl.bak", "other/data.pkl", "data/0/x"])
        members.append((f"{prefix}/{extra}", bytes(rng.choice([1, 4096, 1 << 20])), zipfile.ZIP_STORED))
        what = f"extra record {extra}"
    elif what in ("drop", "duplicate"):
        chosen = members[pick]
        members = [m for m in members if m is not chosen] if what == "drop" else [*members, chosen]
        what = f"{what} {chosen[0]}"
    elif what == "pickle":
        evil = rng.choice(EVIL_PICKLES)
        members = [(n, evil if n.endswith("/data.pkl") else p, m) for n, p, m in members]
        return rezipped(data, members), f"ckpt, data.pkl := {evil[:16]!r}"
    elif what == "end":
        at, size = rng.choice([(-12, 2), (-10, 2), (-12, 4), (-8, 4), (-2, 2)])
        value = rng.choice(EXTREMES) & ((1 << 8 * size) - 1)
        mutated = data[: len(data) + at] + value.to_bytes(size, "little") + data[len(data) + at + size :]
        return mutated, f"ckpt, end record bytes {at}..{at + size} := {value:#x}"
    else:
        return raw_damage(data, rng, rng.choice(["truncate", "flip", "trailing"]), 512, "ckpt")
    return rezipped(data, members), f"ckpt, {what}"


def adapter_case(rng: random.Random, case: Case, layout: Layout, audio: bytes) -> Case:
    valid = rng.random() < 0.05
    kind = rng.choice(["safetensors", "safetensors", "ckpt", "ckpt", "other"])
    if kind == "other":
        data, how = rng.choice([(b"", "empty"), (audio, "audio"), (b"PK\x03\x04" + bytes(100), "zip magic only")])
        valid, how = False, f"weights: {how}"
    else:
        data, how = (safetensors_case if kind == "safetensors" else ckpt_case)(layout, rng, valid)
    case.route, case.expect, case.description = "/api/adapters", "2xx" if valid else case.expect, how
    case.fields = {"name": f"fuzz {case.seed}-{case.index}"}
    if rng.random() < 0.3:  # the shape fields, right or wrong
        key = rng.choice(["r", "alpha", "enable_lm", "enable_dit", "enable_proj"])
        case.fields[key] = rng.choice(["32", "8", "16.0", "true", "false", "x", "-1", "1e999"])
        case.expect, case.description = "2xx/4xx", f"{how}; {key}={case.fields[key]}"
    filename = rng.choice(["lora_weights.safetensors", "lora_weights.ckpt", "../../etc/passwd", "w"])
    case.files = {"weights": (filename, data, "application/octet-stream")}
    return case


# --- multipart bodies ---

Part = tuple[list[bytes], bytes]  # header lines, content
ODD_NAMES = ("../../etc/passwd", "a\x00b", "\x00", "", "名字", '"', "a\r\nX-Injected: 1", "%00", "x" * 5000, ";")


def part(name: str, content: bytes, filename: str | None = None, ctype: str | None = None) -> Part:
    disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return [disposition.encode(), *([f"Content-Type: {ctype}".encode()] if ctype else [])], content


def multipart(parts: list[Part], boundary: bytes, newline: bytes = b"\r\n", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + newline + newline.join(h) + newline * 2 + c + newline for h, c in parts)
    return body + (b"--" + boundary + b"--" + newline if close else b"")


def route_parts(route: str, case: Case, audio: bytes, weights: bytes) -> list[Part]:
    name = f"fuzz {case.seed}-{case.index}".encode()
    if route == "/api/voices":
        return [part("name", name), part("text", "参考".encode()), part("audio", audio, "a.wav", "audio/wav")]
    if route == "/api/adapters":
        return [part("name", name), part("weights", weights, "lora_weights.safetensors", "application/octet-stream")]
    fields = [part(k, v.encode()) for k, v in {"text": "你好", "max_len": "4", "inference_timesteps": "1"}.items()]
    return [*fields, part("prompt_text", "参考".encode()), part("prompt_audio", audio, "a.wav", "audio/wav")]


URLENCODED = (b"text=%zz", b"text=%ff%fe&max_len=4", b"a=1&" * 5000, b"text=" + b"x" * (1 << 20), b"=&=&;;", b"%")


@dataclass
class Body:
    """A multipart body being broken: its parts, boundary, declared Content-Type and line ending."""

    parts: list[Part]
    boundary: bytes
    content_type: str
    newline: bytes = b"\r\n"
    steps: list[str] = field(default_factory=list)

    def render(self, rng: random.Random) -> bytes:
        close = not {"no close", "no final --"} & set(self.steps)
        body = multipart(self.parts, self.boundary, self.newline, close)
        if "no final --" in self.steps:  # a delimiter where the closing one belongs
            body += b"--" + self.boundary + self.newline
        if "merged parts" in self.steps:  # a delimiter between two parts left out
            body = body[:1] + body[1:].replace(b"--" + self.boundary + self.newline, b"", 1)
        if "raw" in self.steps:
            body, how = raw_damage(body, rng, rng.choice(["truncate", "flip"]), 512, "body")
            self.steps[self.steps.index("raw")] = how.removeprefix("body, ")
        return body


BOUNDARY_FAULTS = {  # what a wrong boundary parameter declares (the others break the body itself)
    "other boundary": "multipart/form-data; boundary=other",
    "none": "multipart/form-data",
    "empty": "multipart/form-data; boundary=",
    "long": f"multipart/form-data; boundary={'b' * 300}",
    **dict.fromkeys(["no close", "no final --", "merged parts"], ""),
}
WRONG_TYPES = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/mixed",
    "",
    "image/png",
)


def break_body(body: Body, rng: random.Random) -> str:
    """One thing a multipart parser trusts, broken; what was done."""
    what = rng.choice(["extra", "duplicate", "boundary", "header", "charset", "name", "type", "lf", "raw"])
    parts, at = body.parts, rng.randrange(len(body.parts))
    if what == "extra":
        count, file = rng.choice([1, 2, 5, 10, 100, 1000]), rng.random() < 0.5
        parts += [part(f"x{i}", b"v", "f.bin" if file else None) for i in range(count)]
        return f"{count} extra {'files' if file else 'fields'}"
    if what == "duplicate":
        times = rng.choice([1, 2, 20])
        parts += [parts[at]] * times
        return f"part {at} {times + 1} times"
    if what == "boundary":
        what = rng.choice(sorted(BOUNDARY_FAULTS))
        body.content_type = BOUNDARY_FAULTS[what] or body.content_type
        return what
    if what == "header":
        size = rng.choice([8 << 10, 64 << 10, 1 << 20])
        lines = [b"X-Junk: " + b"a" * size] if rng.random() < 0.5 else [b"X-H: v"] * (size // 64)
        parts[at] = (parts[at][0] + lines, parts[at][1])
        return f"part {at} with {size} B of headers"
    if what == "charset":
        charset = rng.choice(["latin-1", "utf-16", "bogus", '""', "utf-8"])
        body.content_type += f"; charset={charset}"
        parts.append(part(rng.choice(["text", "name", "_charset_"]), rng.choice([b"\xff\xfe\xfa", b"latin-1"])))
        return f"charset={charset} and a field of other bytes"
    if what == "name":
        odd, file = rng.choice(ODD_NAMES), rng.random() < 0.5
        named = parts[at][0][0].split(b'"')[1].decode()  # the part's own name, to give it an odd file name
        parts[at] = part(named, parts[at][1], odd) if file else part(odd, b"v")
        return f"{'filename' if file else 'name'} {odd[:20]!r}"
    if what == "type":
        body.content_type = rng.choice(WRONG_TYPES).replace("mixed", f"mixed; boundary={body.boundary.decode()}")
        parts[at] = (parts[at][0] + [b"Content-Type: image/png"], parts[at][1])
        return f"body typed {body.content_type!r}, part {at} typed image/png"
    if what == "lf":
        body.newline = b"\n"
    return what


def multipart_case(rng: random.Random, case: Case, audio: bytes, weights: bytes) -> Case:
    case.route = rng.choice(["/api/voices", "/api/tts", "/api/adapters"])
    if rng.random() < 0.1:
        case.body, case.content_type = rng.choice(URLENCODED), "application/x-www-form-urlencoded"
        case.description = f"urlencoded {case.body[:16]!r} ({len(case.body)} B)"
        return case
    boundary = b"fuzz" + str(rng.getrandbits(40)).encode()
    body = Body(
        route_parts(case.route, case, audio, weights), boundary, f"multipart/form-data; boundary={boundary.decode()}"
    )
    body.steps = [break_body(body, rng) for _ in range(rng.choice([1, 1, 2]))]
    case.body, case.content_type = body.render(rng), body.content_type
    case.description = "; ".join(body.steps)
    return case
