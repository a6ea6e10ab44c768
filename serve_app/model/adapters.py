"""LoRA adapters as both engines use them: the shape a model takes, a weights file checked against it, and
the adapters a replica keeps loaded.

voxcpm fixes an instance's LoRA shape (rank, targets) when it builds the model (``LoRAConfig``): its
``LoRALinear`` layers wrap the targeted projections, and an adapter is their ``lora_A`` / ``lora_B``
parameters, saved by its trainer under the parameters' names (``lora_weights.safetensors`` or a ``.ckpt``).
voxcpm's own loader copies the keys it knows and skips the rest silently; here a file must name exactly
the model's LoRA parameters, each with its shape, in finite numbers, or it is refused naming ``weights``
(another model's adapter, a renamed key, another rank), so that no adapter is half applied.

The reference engine copies a request's adapter into voxcpm's layers (``VoxCPMLoRA``); the batched engine
applies each row's own (``batched/lora.py``). Both take it from ``AdapterCache``: a file is read on any
thread (no torch kernels there: see ``engine.py``), moved to the model's device and dtype on the engine's.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def check_names_and_shapes(found: Layout, expected: Layout) -> None:
    """Refused (400 naming ``weights``) unless ``found`` names exactly ``expected``'s parameters, shapes alike."""
    if not expected:
        raise BadRequest("this model serves no adapters (its `lora:` is null)", WEIGHTS_FIELD)
    unknown, missing = sorted(found.keys() - expected.keys()), sorted(expected.keys() - found.keys())
    if unknown:
        raise BadRequest(
            f"weights has {len(unknown)} keys this model has no LoRA parameter for, e.g. {unknown[0]!r}: an adapter "
            "of another model, or of another `enable_*` shape",
            WEIGHTS_FIELD,
        )
    if missing:
        raise BadRequest(
            f"weights lacks {len(missing)} of this model's {len(expected)} LoRA parameters, e.g. {missing[0]!r}",
            WEIGHTS_FIELD,
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise BadRequest(
                f"weights[{name!r}] has shape {list(found[name])}, this model's is {list(shape)} (another rank, "
                "or another model's adapter)",
                WEIGHTS_FIELD,
            )


def read_weights(path: Path, expected: Layout) -> dict[str, torch.Tensor]:
    """An adapter file's tensors (on the host, as stored), checked against ``expected``: safetensors, or a
    ``.ckpt`` read with ``weights_only`` (no code runs from it); voxcpm's trainer writes either. The format is
    told by the file's first bytes, not its name."""
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if not zipped:
            with safetensors.safe_open(str(path), framework="pt") as handle:  # shapes from the header first
                names = list(handle.keys())
                check_names_and_shapes({name: tuple(handle.get_slice(name).get_shape()) for name in names}, expected)
            tensors = safetensors.torch.load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
                raise BadRequest("weights is not a state dict of tensors", WEIGHTS_FIELD)
            tensors = {str(name): value for name, value in loaded.items()}
            check_names_and_shapes({name: tuple(tensor.shape) for name, tensor in tensors.items()}, expected)
    except (BadRequest, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a crafted file makes the parsers raise
        raise BadRequest(f"weights cannot be read as a LoRA adapter ({type(exc).__name__})", WEIGHTS_FIELD) from None
    for name, tensor in tensors.items():
        if not _finite(tensor):
            raise BadRequest(f"weights[{name!r}] is not all finite floating-point numbers", WEIGHTS_FIELD)
    return tensors


_EXPONENT_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value is a finite float, with numpy on the raw bits (any thread; no torch kernel)."""
    if not tensor.is_floating_point():
        return False
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
