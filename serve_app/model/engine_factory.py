"""The engine a model's config names (``engine:``), loaded: the one module that knows every engine, so that
no engine imports the others or its chooser."""

from __future__ import annotations

from serve_app.config import ModelConfig
from serve_app.model.batched.batch_engine import BatchedEngine
from serve_app.model.engine import Engine
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.voice_store import VoiceStore


def load_engine(config: ModelConfig, voices: VoiceStore | None = None, adapters: AdapterStore | None = None) -> Engine:
    """The engine ``config.engine`` names, loaded and warmed up as the config says."""
    if config.engine == "batched":
        return BatchedEngine.load(config, voices, adapters)
    return ReferenceEngine.load(config, voices, adapters)
