"""LoRA adapters: a fine-tuned voice's weights, stored once, used by id or name, owned by a tenant.

An uploaded adapter is a directory ``<root>/<id>/`` holding its weights as uploaded (``weights.safetensors``
or ``weights.ckpt``, never the upload's file name) and ``adapter.json``; durability, concurrency and ids as
for voices (``durable.py``), ownership and quotas too (``tenants.py``): a tenant sees its own and the shared
ones (an admin's uploads, and those a model's config declares, ``declared``), and another tenant's id is a
404 as an absent one. An adapter belongs to one model (its LoRA shape is the model's).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.config import AppConfig, TenantQuotas
from serve_app.errors import Forbidden, NotFound
from serve_app.store import tenants
from serve_app.store.durable import RECORD_ID, DurableDirectory, new_id, write_durably
from serve_app.store.tenants import Principal

_META = "adapter.json"
WEIGHTS_FILES = ("weights.safetensors", "weights.ckpt")
_DECLARED = uuid.UUID("5b0f3c1e-8f61-4c39-9a57-1d0c7be1a2f4")  # namespace of the declared adapters' ids


@dataclass(frozen=True)
class Adapter:
    adapter_id: str
    name: str
    model: str  # the model whose LoRA shape it has
    r: int
    alpha: float
    enable_lm: bool
    enable_dit: bool
    enable_proj: bool
    file: str  # uploaded: one of WEIGHTS_FILES; declared: the path the config gives
    digest: str  # of the weights file: a replica's cache key
    created: float
    owner: str | None = None  # the tenant that uploaded it; None: shared
    bytes: int = 0
    source: str = "upload"  # or "config": declared in the model's config

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("digest", "file")}

    def visible_to(self, caller: Principal) -> bool:
        return tenants.visible_to(self, caller)


def declared_id(model: str, name: str) -> str:
    """The id of an adapter a model's config declares: every replica derives it alike."""
    return uuid.uuid5(_DECLARED, f"{model}/{name}").hex


def declared(config: AppConfig) -> list[Adapter]:
    """The adapters the models' configs declare."""
    return [
        Adapter(
            declared_id(model.name, name),
            name,
            model.name,
            **model.lora.model_dump(),
            file=path,
            digest=path,
            created=0.0,
            source="config",
        )
        for model in config.models
        if model.lora is not None
        for name, path in model.adapters.items()
    ]


class AdapterStore:
    def __init__(self, root: str | Path, quotas: TenantQuotas | None = None, declared: list[Adapter] | None = None):
        self.records = DurableDirectory(root, "adapter")
        self.declared = declared or []
        quotas = quotas or TenantQuotas(adapters=None, adapter_bytes=None)
        self._quota = (("quotas.adapters", quotas.adapters), ("quotas.adapter_bytes", quotas.adapter_bytes))

    def recover(self) -> None:
        self.records.recover()

    def commit(self, staging: Path, adapter: Adapter, caller: Principal) -> Adapter:
        """The adapter whose weights are staged (as ``adapter.file``), saved for the caller's tenant (an
        admin's: shared): its name once per tenant, within the tenant's quotas."""
        adapter = dataclasses.replace(adapter, owner=None if caller.admin else caller.tenant)
        write_durably(staging / _META, json.dumps(asdict(adapter)).encode())
        self.records.commit(
            staging,
            adapter.adapter_id,
            lambda: tenants.admit(adapter, [*self.declared, *self._uploaded()], caller, "adapter", self._quota),
        )
        return adapter

    def check_room(self, caller: Principal, incoming: int = 1) -> None:
        """403 for a tenant that cannot keep one more adapter of ``incoming`` bytes, before its upload is read."""
        tenants.check_room(self._uploaded(), caller, "adapter", self._quota, incoming)

    def list(self, caller: Principal) -> list[Adapter]:
        """The adapters the caller may use: the declared ones, then its own and the shared uploads, oldest first."""
        return [*self.declared, *(a for a in self._uploaded() if a.visible_to(caller))]

    def get(self, adapter_id: str, caller: Principal) -> Adapter:
        adapter = self._by_id(adapter_id)
        if adapter is None or not adapter.visible_to(caller):
            raise NotFound(f"no adapter {adapter_id!r}", "adapter_id")
        return adapter

    def find(self, id_or_name: str, field: str, caller: Principal) -> Adapter:
        """By id, else by name: the caller's own first, then the shared ones (the most recent of a name)."""
        if (adapter := self._by_id(id_or_name)) is not None and adapter.visible_to(caller):
            return adapter
        if (adapter := tenants.named_for(id_or_name, [*self.declared, *self._uploaded()], caller)) is None:
            raise NotFound(f"no adapter {id_or_name!r}", field)
        return adapter

    def weights_path(self, adapter: Adapter) -> Path:
        """Where a replica reads the adapter's weights."""
        if adapter.source == "config":
            return Path(adapter.file)
        return self.records.path(adapter.adapter_id) / adapter.file

    def delete(self, adapter_id: str, caller: Principal) -> None:
        adapter = self.get(adapter_id, caller)
        if adapter.source == "config":
            raise Forbidden("this adapter is declared in the model's config: remove it there", "adapter_id")
        tenants.check_delete(adapter, caller, "adapter", "adapter_id")
        if not self.records.discard(adapter_id):  # a concurrent delete took it first
            raise NotFound(f"no adapter {adapter_id!r}", "adapter_id")

    def _by_id(self, adapter_id: str) -> Adapter | None:
        if not RECORD_ID.match(adapter_id):
            return None
        return next((a for a in self.declared if a.adapter_id == adapter_id), None) or self._read(adapter_id)

    def _uploaded(self) -> list[Adapter]:
        return [adapter for adapter in self.records.read_all(_META, Adapter) if _stored(adapter)]

    def _read(self, adapter_id: str) -> Adapter | None:
        adapter = self.records.read(adapter_id, _META, Adapter)
        return adapter if adapter is not None and _stored(adapter) else None


def _stored(adapter: Adapter) -> bool:
    """Its weights are one of the store's own file names: never a path a record's file could name."""
    return adapter.file in WEIGHTS_FILES


def new_adapter(name: str, model: str, shape: dict, file: str, digest: str, size: int) -> Adapter:
    return Adapter(new_id(), name, model, **shape, file=file, digest=digest, created=time.time(), bytes=size)
