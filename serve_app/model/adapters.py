"""LoRA adapters as both engines use them: the shape a model takes, a weights file checked against it, and
the adapters a replica keeps loaded.

voxcpm fixes an instance's LoRA shape (rank, targets) when it builds the model (``LoRAConfig``): its
``LoRALinear`` layers wrap the targeted projections, and an adapter is their ``lora_A`` / ``lora_B``
parameters, saved by its trainer under the parameters' names (``lora_weights.safetensors`` or a ``.ckpt``).
voxcpm's own loader copies the keys it knows and skips the rest silently; here a file must name exactly
the model's LoRA parameters, each with its shape, in finite numbers, or it is refused naming ``weights``
(another model's adapter, a renamed key, another rank), so that no adapter is half applied. Before that,
what a file claims is bounded by what the model's layout needs, before it is read: a few hundred KB
could otherwise claim gigabytes of the replica (``read_weights``; docs/adapters.md#limits-and-ownership).

The reference engine copies a request's adapter into voxcpm's layers (``VoxCPMLoRA``); the batched engine
applies each row's own (``batched/lora.py``). Both take it from ``AdapterCache``: a file is read on any
thread (no torch kernels there: see ``engine.py``), moved to the model's device and dtype on the engine's.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import pickletools
import re
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors
import safetensors.torch
import torch

from serve_app.config import LoRAShape
from serve_app.errors import BadRequest
from serve_app.store.adapter_store import Adapter

Layout = dict[str, tuple[int, ...]]  # a model's LoRA parameter names -> shapes
WEIGHTS_FIELD = "weights"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a .ckpt); anything else is read as safetensors
WEIGHT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}  # safetensors' names
# What a file may hold per tensor of the model's layout, generously (real files need a fraction of each)
HEADER_BYTES_PER_TENSOR = 512  # safetensors' header: the name, dtype, shape and offsets (real: ~140)
PICKLE_BYTES_PER_TENSOR = 1024  # torch.save's data.pkl (real: ~130, a Parameter's ~150)
PICKLE_OPS_PER_TENSOR = 64  # its opcodes (real: 32, a Parameter's 42)
DIRECTORY_BYTES_PER_MEMBER = 256  # a zip directory entry: 46 bytes, the record's name, zip64 sizes
SLACK_BYTES = 64 * 1024  # safetensors' metadata; the pickle's own objects; storage alignment
_SMALL_RECORDS = ("version", "byteorder", ".data/serialization_id", ".format_version", ".storage_alignment")
_STORAGE = re.compile(r"data/[0-9]+")
_PICKLED_GLOBALS = {  # what torch.save's pickle of a state dict of F16/BF16/F32 tensors or Parameters calls
    *("collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter"),
    *("torch FloatStorage", "torch HalfStorage", "torch BFloat16Storage"),
}
_END = struct.Struct("<4s4H2LH")  # a zip's end of central directory record
_LOCATOR = struct.Struct("<4sLQL")  # the zip64 end record's locator
_END64 = struct.Struct("<4sQ2H2L4Q")  # the zip64 end record
_UNSET = object()


def lora_config(shape: LoRAShape) -> Any:
    """voxcpm's ``LoRAConfig`` for ``shape`` (its default target modules)."""
    from voxcpm.model.voxcpm import LoRAConfig

    return LoRAConfig(**shape.model_dump())


def _plain(name: str) -> str:
    return name.replace("._orig_mod.", ".").replace("_orig_mod.", "")  # torch.compile's wrapper


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's LoRA parameters by the names its trainer saves them under."""
    return {_plain(name): parameter for name, parameter in model.named_parameters() if ".lora_" in name}


def layout(model: torch.nn.Module) -> Layout:
    return {name: tuple(parameter.shape) for name, parameter in lora_parameters(model).items()}


def _refused(message: str) -> BadRequest:
    return BadRequest(message, WEIGHTS_FIELD)


def check_names_and_shapes(found: Layout, expected: Layout) -> None:
    """Refused (400 naming ``weights``) unless ``found`` names exactly ``expected``'s parameters, shapes alike."""
    unknown, missing = sorted(found.keys() - expected.keys()), sorted(expected.keys() - found.keys())
    if unknown:
        raise _refused(
            f"weights has {len(unknown)} keys this model has no LoRA parameter for, e.g. {unknown[0]!r}: an adapter "
            "of another model, or of another `enable_*` shape"
        )
    if missing:
        raise _refused(
            f"weights lacks {len(missing)} of this model's {len(expected)} LoRA parameters, e.g. {missing[0]!r}"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise _refused(
                f"weights[{name!r}] has shape {list(found[name])}, this model's is {list(shape)} (another rank, "
                "or another model's adapter)"
            )


def read_weights(path: Path, expected: Layout) -> dict[str, torch.Tensor]:
    """An adapter file's tensors (on the host, as stored), checked against ``expected``: safetensors, or a
    ``.ckpt`` read with ``weights_only`` (no code runs from it); voxcpm's trainer writes either. The format is
    told by the file's first bytes, not its name. Each is bounded by the model's layout before anything it
    claims is read: a refused file costs the replica under a MiB (benchmarks/adapter_refusals.py)."""
    if not expected:
        raise _refused("this model serves no adapters (its `lora:` is null)")
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        tensors = _read_ckpt(path, expected) if zipped else _read_safetensors(path, expected)
    except (BadRequest, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a crafted file makes the parsers raise
        raise _refused(f"weights cannot be read as a LoRA adapter ({type(exc).__name__})") from None
    for name, tensor in tensors.items():
        if not _finite(tensor):
            raise _refused(f"weights[{name!r}] is not all finite numbers")
    return tensors


def check_dtypes(found: dict[str, str | torch.dtype]) -> None:
    """Refused (400 naming ``weights``) unless every tensor is F16, BF16 or F32 (as safetensors' header names
    them, or torch's dtypes): what a LoRA layer takes, and what the finite check can read."""
    for name, dtype in found.items():
        if dtype not in WEIGHT_DTYPES and dtype not in WEIGHT_DTYPES.values():
            raise _refused(f"weights[{name!r}] is {dtype}: an adapter's weights are F16, BF16 or F32")


def _read_safetensors(path: Path, expected: Layout) -> dict[str, torch.Tensor]:
    """The header's length (its first 8 bytes) bounded by what ``expected`` needs before the header is read,
    then names, shapes and dtypes from the header before any tensor is."""
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
        size = handle.seek(0, os.SEEK_END)
    limit = len(expected) * HEADER_BYTES_PER_TENSOR + SLACK_BYTES
    if header > min(limit, size - 8):
        raise _refused(
            f"weights' safetensors header claims {header:,} bytes: more than the file holds, or than an adapter "
            f"of this model's {len(expected)} tensors needs ({limit:,})"
        )
    with safetensors.safe_open(str(path), framework="pt") as handle:
        slices = {name: handle.get_slice(name) for name in handle.keys()}
        check_names_and_shapes({name: tuple(piece.get_shape()) for name, piece in slices.items()}, expected)
        check_dtypes({name: piece.get_dtype() for name, piece in slices.items()})
    return safetensors.torch.load_file(str(path))


def _read_ckpt(path: Path, expected: Layout) -> dict[str, torch.Tensor]:
    """Its zip directory checked first (``_check_archive``), then read weights-only and memory-mapped: a
    Parameter (a state dict of ``named_parameters()``) as the plain tensor it holds."""
    _check_archive(path, expected)
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise _refused("weights is not a state dict of tensors")
    tensors = {str(name): value.detach() for name, value in loaded.items()}
    check_names_and_shapes({name: tuple(tensor.shape) for name, tensor in tensors.items()}, expected)
    check_dtypes({name: tensor.dtype for name, tensor in tensors.items()})
    return tensors


def _check_archive(path: Path, expected: Layout) -> None:
    """A ``.ckpt`` refused from its zip directory unless it is what ``torch.save`` writes for ``expected``:
    stored (never deflated) records, only those torch.save writes, ``data.pkl`` and the storages no larger than
    the layout needs; then its pickle, unless it calls only what a state dict of F16/BF16/F32 tensors does, in
    no more opcodes than its tensors take. torch.load inflates ``data.pkl`` whole before unpickling it (a
    deflated one of 262 KB took 512 MiB), and the unpickler it runs may build any number of objects and call
    ``bytearray`` or the storage classes with any size."""
    tensors = len(expected)
    records = {"data.pkl": tensors * PICKLE_BYTES_PER_TENSOR + SLACK_BYTES, **dict.fromkeys(_SMALL_RECORDS, 64)}
    storage_limit = 4 * sum(math.prod(shape) for shape in expected.values()) + SLACK_BYTES  # float32, the widest
    with open(path, "rb") as handle, _archive(handle, tensors + len(records)) as archive:
        members = archive.infolist()
        prefix = members[0].filename.split("/", 1)[0] + "/"
        names = [member.filename.removeprefix(prefix) for member in members]
        storage = 0
        for member, name in zip(members, names, strict=True):
            if member.compress_type != zipfile.ZIP_STORED:
                raise _refused(f"weights' record {member.filename!r} is compressed: torch.save stores its records")
            if not member.filename.startswith(prefix) or not (name in records or _STORAGE.fullmatch(name)):
                raise _refused(f"weights has a record torch.save does not write: {member.filename!r}")
            storage += 0 if name in records else member.file_size
            if member.file_size > records.get(name, storage_limit) or storage > storage_limit:
                raise _refused(f"weights' record {member.filename!r} is larger than this model's adapter needs")
        if len(set(names)) != len(names) or "data.pkl" not in names:
            raise _refused("weights is not an archive torch.save writes (a record twice, or no data.pkl)")
        with archive.open(prefix + "data.pkl") as pickled:
            for count, (opcode, argument, _) in enumerate(pickletools.genops(pickled)):
                if opcode.name == "GLOBAL" and argument not in _PICKLED_GLOBALS:
                    called = str(argument).replace(" ", ".")
                    raise _refused(f"weights' pickle calls {called}: a state dict of F16, BF16 or F32 tensors does not")
                if count > tensors * PICKLE_OPS_PER_TENSOR + 1024:
                    raise _refused("weights' pickle builds more objects than a state dict of this model's adapter")


@contextlib.contextmanager
def _archive(handle: BinaryIO, most: int) -> Iterator[zipfile.ZipFile]:
    """The zip archive in ``handle``, its directory bounded (``most`` members) before it is parsed, and
    refused where Python's zipfile and torch's reader (miniz) could read different directories: its end record
    is the file's last bytes (no comment), a zip64 one is right before its locator and agrees with it, and the
    directory ends where they begin. torch.save writes exactly that."""
    size = handle.seek(0, os.SEEK_END)
    tail = _END64.size + _LOCATOR.size + _END.size
    handle.seek(max(size - tail, 0))
    data = handle.read()
    signature, *_, entries, directory_bytes, directory_at, comment = _END.unpack_from(data, len(data) - _END.size)
    end = size - _END.size
    if data[-_END.size - _LOCATOR.size :][:4] == b"PK\x06\x07":  # a zip64 end record's locator (torch.save's)
        end -= _LOCATOR.size + _END64.size
        record = _END64.unpack_from(data) if len(data) == tail else (b"",)
        if (
            record[0] != b"PK\x06\x06"
            or _LOCATOR.unpack_from(data, _END64.size)[2] != end
            or record[7:] != (entries, directory_bytes, directory_at)
        ):
            raise _refused("weights' zip64 end record is not where its locator says, or disagrees with its end record")
    if signature != b"PK\x05\x06" or comment or directory_at + directory_bytes != end:
        raise _refused("weights is not a zip archive as torch.save writes it (its directory is not before its end)")
    if entries > most or directory_bytes > most * DIRECTORY_BYTES_PER_MEMBER:
        raise _refused(f"weights has {entries:,} records: an adapter of this model's needs at most {most}")
    with zipfile.ZipFile(handle) as archive:
        if len(archive.infolist()) != entries:
            raise _refused("weights' zip directory holds another number of records than its end record says")
        yield archive


_EXPONENT_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value is a finite float, with numpy on the raw bits (any thread; no torch kernel)."""
    if tensor.dtype in _EXPONENT_BITS:  # numpy has no bfloat16: a value is finite unless its exponent is all ones
        exponent = _EXPONENT_BITS[tensor.dtype]
        return not np.any((tensor.contiguous().view(torch.int16).numpy() & exponent) == exponent)
    return bool(np.isfinite(tensor.numpy()).all())


@dataclass(eq=False)
class LoadedAdapter:
    """One adapter's weights, on the host until the engine's thread first asks for them on the device."""

    adapter_id: str
    host: dict[str, torch.Tensor]
    scaling: torch.Tensor  # alpha / r in the LoRA layers' dtype, as voxcpm's ``LoRALinear.scaling``
    _pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def pairs(self, like: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per LoRA layer (its module's name), ``(lora_A, lora_B)`` on ``like``'s device and dtype: call on the
        engine's thread."""
        if self._pairs is None:
            moved = {name: tensor.to(like.device, like.dtype) for name, tensor in self.host.items()}
            modules = sorted({name.rsplit(".", 1)[0] for name in moved})
            self._pairs = {module: (moved[f"{module}.lora_A"], moved[f"{module}.lora_B"]) for module in modules}
            self.scaling = self.scaling.to(like.device)
            self.host = {}
        return self._pairs

    @property
    def bytes(self) -> int:
        tensors = self.host.values() if self._pairs is None else [t for pair in self._pairs.values() for t in pair]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class AdapterCache:
    """The adapters a replica keeps loaded: those its config declares (loaded at start, never dropped) and up
    to ``resident`` uploaded ones, the least recently used dropped first. A request holds its adapter while
    it runs, so one dropped meanwhile is freed when its last request ends."""

    def __init__(
        self, shape: LoRAShape, expected: Layout, dtype: torch.dtype, resident: int, paths: dict[str, Path]
    ) -> None:
        self.expected = expected
        self._scaling = torch.tensor(shape.alpha / shape.r, dtype=dtype)
        self._resident = resident
        self._paths = paths  # of the adapters this replica's config declares, by id
        self._loaded: collections.OrderedDict[str, LoadedAdapter] = collections.OrderedDict()
        self._pinned: dict[str, LoadedAdapter] = {}
        self._lock = threading.Lock()
        self.loads = 0  # files read since start (the declared ones included)

    def pin_declared(self) -> None:
        """Read every adapter the config declares (at start: a bad one fails the replica, loudly)."""
        for adapter_id, path in self._paths.items():
            self._pinned[adapter_id] = self._read(adapter_id, path)

    def get(self, adapter: Adapter, path: Path) -> LoadedAdapter:
        """The adapter's weights (from ``path`` unless loaded); any thread. A file that no longer fits the
        model (its store was edited by hand) is a 400 naming ``adapter``."""
        with self._lock:
            if (pinned := self._pinned.get(adapter.adapter_id)) is not None:
                return pinned
            key = f"{adapter.adapter_id}:{adapter.digest}"
            if (loaded := self._loaded.get(key)) is not None:
                self._loaded.move_to_end(key)
                return loaded
        try:
            loaded = self._read(adapter.adapter_id, path)
        except BadRequest as exc:
            raise BadRequest(f"adapter {adapter.name!r} cannot be used: {exc.message}", "adapter") from None
        except FileNotFoundError:
            raise BadRequest(f"adapter {adapter.name!r} was deleted", "adapter") from None
        with self._lock:
            self._loaded[key] = loaded
            while len(self._loaded) > self._resident:
                self._loaded.popitem(last=False)
        return loaded

    @property
    def resident(self) -> int:
        return len(self._loaded) + len(self._pinned)

    def _read(self, adapter_id: str, path: Path) -> LoadedAdapter:
        self.loads += 1
        return LoadedAdapter(adapter_id, read_weights(declared_file(path), self.expected), self._scaling)


def declared_file(path: Path) -> Path:
    """A declared adapter's weights file: the path itself, or in the directory voxcpm's trainer wrote."""
    if path.is_dir():
        for name in ("lora_weights.safetensors", "lora_weights.ckpt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no lora_weights.safetensors or lora_weights.ckpt in {path}")
    return path


class VoxCPMLoRA:
    """voxcpm's own LoRA layers (the reference engine's), holding one request's adapter at a time: its weights
    copied in, or for the base model zeros with the layers disabled (a zero update, whatever came before)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._parameters = lora_parameters(model)
        self._current: LoadedAdapter | object | None = _UNSET
        self.use(None)

    @torch.inference_mode()
    def use(self, adapter: LoadedAdapter | None) -> None:
        if adapter is self._current:
            return
        if adapter is None:
            for name, parameter in self._parameters.items():
                if name.endswith(".lora_B"):
                    parameter.zero_()
            self._model.set_lora_enabled(False)
        else:
            like = next(iter(self._parameters.values()))
            for module, (a, b) in adapter.pairs(like).items():
                self._parameters[f"{module}.lora_A"].copy_(a)
                self._parameters[f"{module}.lora_B"].copy_(b)
            self._model.set_lora_enabled(True)
        self._current = adapter
