"""Crafted adapter files, made here (nothing binary is committed), each refused naming ``weights`` from what
the model's LoRA layout bounds before any of it inflates: a ``.ckpt`` from its zip directory and its pickle's
opcodes, a safetensors file from its header's length (its first 8 bytes) and then its header. A replica's
check of the worst of them costs it about nothing in memory, measured in a fresh interpreter as
benchmarks/adapter_refusals.py measures every one (``peaks``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from serve_app.errors import BadRequest
from serve_app.model.adapters import (
    HEADER_BYTES_PER_TENSOR,
    PICKLE_BYTES_PER_TENSOR,
    SLACK_BYTES,
    Layout,
    read_weights,
)

MIB = 2**20
# VoxCPM2's number of LoRA tensors (rank 32, LMs and DiT: 320), narrower layers: the bounds scale with both
LAYOUT: Layout = {
    f"base_lm.layers.{layer}.self_attn.{projection}.lora_{half}": (32, 64) if half == "A" else (64, 32)
    for layer in range(40)
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj")
    for half in "AB"
}
Maker = Callable[[Path, Layout], Path]


def adapter(layout: Layout, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: (torch.randn(shape, generator=generator) * 0.05).to(dtype) for name, shape in layout.items()}


def renamed(layout: Layout) -> dict[str, torch.Tensor]:
    tensors = adapter(layout)
    first = next(iter(tensors))
    return {first.replace("self_attn", "attention"): tensors.pop(first), **tensors}


def ckpt(path: Path, content: object) -> Path:
    torch.save(content, path)
    return path


def safetensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    safetensors.torch.save_file(tensors, str(path))
    return path


def rewritten(path: Path, layout: Layout, records: dict[str, bytes | int], drop: tuple[str, ...] = ()) -> Path:
    """voxcpm's trainer's ``.ckpt`` of ``layout`` rewritten by Python's zipfile (a well-formed archive, so what
    is refused is the record): ``records`` replace or add records (bytes stored; an int: that many zero bytes
    deflated, a chunk at a time), ``drop`` removes some."""
    trainers = io.BytesIO(_saved({"state_dict": adapter(layout)}))
    with zipfile.ZipFile(trainers) as source, zipfile.ZipFile(path, "w") as out:
        prefix = source.namelist()[0].split("/")[0]
        for name in source.namelist():
            if name.removeprefix(f"{prefix}/") not in (*records, *drop):
                out.writestr(name, source.read(name))
        for name, content in records.items():
            if isinstance(content, bytes):
                out.writestr(f"{prefix}/{name}", content)
                continue
            info = zipfile.ZipInfo(f"{prefix}/{name}")
            info.compress_type = zipfile.ZIP_DEFLATED
            with out.open(info, "w", force_zip64=True) as record:
                for _ in range(content // MIB):
                    record.write(bytes(MIB))
    return path


def _saved(content: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def deflated_bomb(path: Path, layout: Layout, inflated: int = 256 * MIB) -> Path:
    """``data.pkl`` deflated: torch.load inflates it whole before unpickling (256 MiB from a 250 KB record)."""
    return rewritten(path, layout, {"data.pkl": inflated})


def object_bomb(path: Path, layout: Layout) -> Path:
    """A stored pickle within the size bound that builds a list per 2 bytes (~80 bytes of objects each)."""
    lists = (len(layout) * PICKLE_BYTES_PER_TENSOR + SLACK_BYTES - 4) // 2
    return rewritten(path, layout, {"data.pkl": b"\x80\x02]" + b"]a" * lists + b"."})


def bytearray_pickle(path: Path, layout: Layout, size: int = 1 << 30) -> Path:
    """46 bytes of pickle that weights_only unpickles as ``bytearray(size)``: a global it allows."""
    return rewritten(
        path, layout, {"data.pkl": b"\x80\x02cbuiltins\nbytearray\n\x8a\x05" + size.to_bytes(5, "little") + b"\x85R."}
    )


def many_records(path: Path, layout: Layout, count: int = 2000) -> Path:
    return rewritten(path, layout, {f"data/{100_000 + index}": b"" for index in range(count)})


def trailing_bytes(path: Path, layout: Layout) -> Path:
    """Bytes after the end record: Python's zipfile and torch's reader could find different directories."""
    path.write_bytes(_saved({"state_dict": adapter(layout)}) + bytes(64))
    return path


def disagreeing_end_records(path: Path, layout: Layout) -> Path:
    """torch.save's zip64 end record (right before its locator and the end record) claiming another size."""
    data = bytearray(_saved({"state_dict": adapter(layout)}))
    at = len(data) - 22 - 20 - 56 + 40  # the zip64 record's directory size
    data[at : at + 8] = (int.from_bytes(data[at : at + 8], "little") + 46).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


def empty_tensors(path: Path, layout: Layout, count: int = 200_000) -> Path:
    """A real safetensors header of ``count`` empty tensors with long names: ~100 MB for 200,000."""
    entries = ",".join(
        f'"{index:07d}{"x" * 440}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for index in range(count)
    )
    header = ("{" + entries + "}").encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def header_past_the_end(path: Path, layout: Layout) -> Path:
    path.write_bytes((50_000).to_bytes(8, "little") + b"{}" + bytes(1000))
    return path


REFUSED: dict[str, Maker] = {
    "ckpt: deflated data.pkl (256 MiB inflated)": deflated_bomb,
    "ckpt: pickle building 200,000 lists": object_bomb,
    "ckpt: pickle calling bytearray(1 GiB)": bytearray_pickle,
    "ckpt: 2,000 records more than torch.save writes": many_records,
    "ckpt: a record torch.save does not write": lambda path, layout: rewritten(
        path, layout, {"constants.pkl": b"\x80\x02N."}, drop=("byteorder",)
    ),
    "ckpt: a storage larger than the layout in float32": lambda path, layout: rewritten(
        path, layout, {"data/0": bytes(4 * sum(a * b for a, b in layout.values()) + SLACK_BYTES + 1)}
    ),
    "ckpt: no data.pkl": lambda path, layout: rewritten(path, layout, {}, drop=("data.pkl",)),
    "ckpt: bytes after its end record": trailing_bytes,
    "ckpt: zip64 end record disagreeing": disagreeing_end_records,
    "ckpt: float8 weights": lambda path, layout: ckpt(path, adapter(layout, torch.float8_e4m3fn)),
    "ckpt: another model's names": lambda path, layout: ckpt(path, {"state_dict": renamed(layout)}),
    "safetensors: 200,000 empty tensors (100 MB header)": empty_tensors,
    "safetensors: header past the file's end": header_past_the_end,
    "safetensors: float8 weights": lambda path, layout: safetensors_file(path, adapter(layout, torch.float8_e4m3fn)),
    "safetensors: integer weights": lambda path, layout: safetensors_file(path, adapter(layout, torch.int32)),
    "safetensors: another model's names": lambda path, layout: safetensors_file(path, renamed(layout)),
}
ACCEPTED: dict[str, Maker] = {
    "ckpt: voxcpm's trainer's (float32)": lambda path, layout: ckpt(path, {"state_dict": adapter(layout)}),
    "ckpt: Parameters (named_parameters())": lambda path, layout: ckpt(
        path, {name: torch.nn.Parameter(tensor) for name, tensor in adapter(layout).items()}
    ),
    "safetensors: voxcpm's trainer's (float32)": lambda path, layout: safetensors_file(path, adapter(layout)),
    "safetensors: bfloat16": lambda path, layout: safetensors_file(path, adapter(layout, torch.bfloat16)),
}

_PEAKS = """
import json, sys
from pathlib import Path
import safetensors, torch
from serve_app.errors import BadRequest
from serve_app.model.adapters import read_weights

def kib(key):
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(key + ":"))

def unchecked(path, layout):  # what the replica ran first before the bounds: torch.load, or the header parsed
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\\x03\\x04"
    if zipped:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    else:
        safetensors.safe_open(str(path), framework="pt").keys()

job = json.load(sys.stdin)
check = unchecked if job["unchecked"] else read_weights
for warm in job["warm"]:  # the readers' lazy imports, not counted
    read_weights(Path(warm), {"m.lora_A": (1, 1), "m.lora_B": (1, 1)})
layout = {name: tuple(shape) for name, shape in job["layout"].items()}
for path in job["paths"]:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = kib("VmRSS")
    try:
        check(Path(path), layout)
        outcome = "accepted"
    except BadRequest as exc:
        outcome = f"{exc.status} {exc.field}: {exc.message}"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
    print(json.dumps({"outcome": outcome, "peak_increase_mib": (kib("VmHWM") - before) / 1024}), flush=True)
"""


def peaks(paths: list[Path], layout: Layout, unchecked: bool = False) -> list[dict]:
    """Each file checked as the model replica checks an upload (``read_weights``, what
    ``VoxCPMDeployment.check_adapter`` runs), in one fresh interpreter after a check of a two-tensor adapter
    of each format: per file, the outcome and the process's peak RSS increase (MiB; glibc's mmap threshold
    fixed, so what one check frees is returned before the next). ``unchecked``: torch.load or safetensors'
    header parse alone, as the replica read a file before these bounds."""
    warm = paths[0].parent / "warm"
    warm.mkdir(exist_ok=True)
    tiny = {"m.lora_A": torch.zeros(1, 1), "m.lora_B": torch.zeros(1, 1)}
    files = [ckpt(warm / "tiny.ckpt", tiny), safetensors_file(warm / "tiny.safetensors", tiny)]
    job = {"warm": [str(f) for f in files], "layout": layout, "paths": [str(p) for p in paths], "unchecked": unchecked}
    done = subprocess.run(
        [sys.executable, "-c", _PEAKS],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("label", REFUSED)
def test_each_crafted_file_is_refused_naming_weights(label: str, tmp_path: Path) -> None:
    path = REFUSED[label](tmp_path / "weights", LAYOUT)
    with pytest.raises(BadRequest) as refused:
        read_weights(path, LAYOUT)
    assert refused.value.field == "weights" and refused.value.status == 400, refused.value.message


@pytest.mark.parametrize("label", ACCEPTED)
def test_parameters_and_half_precision_are_read_as_plain_tensors(label: str, tmp_path: Path) -> None:
    read = read_weights(ACCEPTED[label](tmp_path / "weights", LAYOUT), LAYOUT)
    want = adapter(LAYOUT)
    assert read.keys() == want.keys()
    for name, tensor in read.items():
        assert type(tensor) is torch.Tensor and not tensor.requires_grad
        assert torch.allclose(tensor.float(), want[name], atol=1e-3)


def test_a_header_past_the_layouts_bound_is_refused_from_its_first_8_bytes(tmp_path: Path) -> None:
    """The rest is not even JSON: it is never read."""
    bound = len(LAYOUT) * HEADER_BYTES_PER_TENSOR + SLACK_BYTES
    path = tmp_path / "claims.safetensors"
    path.write_bytes((bound + 1).to_bytes(8, "little") + b"\xff" * (bound + 1))
    with pytest.raises(BadRequest) as refused:
        read_weights(path, LAYOUT)
    assert f"header claims {bound + 1:,} bytes" in refused.value.message and refused.value.field == "weights"


def test_no_refused_file_costs_the_replica_more_than_a_few_mib(tmp_path: Path) -> None:
    """A fresh interpreter's peak RSS increase for the check of each: before these bounds the deflated bomb
    took its inflated size (256 MiB), the 100 MB header more than its size, bytearray its argument (1 GiB)."""
    paths = [make(tmp_path / f"{index}", LAYOUT) for index, make in enumerate(REFUSED.values())]
    for label, measured in zip(REFUSED, peaks(paths, LAYOUT), strict=True):
        assert measured["outcome"].startswith("400 weights"), (label, measured)
        assert measured["peak_increase_mib"] < 8, (label, measured)
