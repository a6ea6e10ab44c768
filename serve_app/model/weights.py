"""Which weights a model replica loads, decided before voxcpm sees them.

A first start must either speak with real weights or say plainly that it does not, and it must
never hang on a hub it cannot reach (CI, air-gapped machines, the development machines):
``huggingface_hub`` retries with timeouts that add up to minutes. So the decision is made here:

- a local directory is loaded as it is: real weights, unless the config names a
  ``synthetic_preset``, which writes a synthetic (random-weight) checkpoint there if none is
  there yet (tests and local development);
- a hub id is looked up in the local cache first (a second start is offline), then, after a
  reachability probe of the hub (``HF_ENDPOINT``) bounded by a few seconds, downloaded
  (``serve_app/hub.py``);
- a hub that cannot be reached (or ``HF_HUB_OFFLINE=1`` with nothing cached) falls back to the
  config's ``synthetic_preset``, built under ``checkpoints/``, with a banner that says the service
  speaks noise and how to get real weights; the model is then marked synthetic (``/health``,
  ``/v1/models``, the playground). Without a preset it is an error that says the same.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from serve_app import hub
from serve_app.config import ModelConfig
from serve_app.hub import is_local, public_source
from serve_app.model import synthetic

__all__ = ["Weights", "is_local", "public_source", "resolve"]

logger = logging.getLogger("ray.serve")

SYNTHETIC_DIR = Path("checkpoints")  # fallback checkpoints, relative to where `serve run` starts


@dataclass(frozen=True)
class Weights:
    """What to load: the source chosen, its local checkpoint directory, and whether its weights are random."""

    source: str
    path: str
    synthetic: bool


def resolve(config: ModelConfig) -> Weights:
    """The checkpoint directory for ``config``'s model, downloading or building it if need be."""
    if is_local(config.source):  # what the user asked for, GPU or not
        return _local(config)
    if config.gpu_source is not None and config.device != "cpu" and _cuda_available():
        return resolve(config.model_copy(update={"source": config.gpu_source, "gpu_source": None}))
    return _from_hub(config)


def _local(config: ModelConfig) -> Weights:
    directory = Path(config.source).expanduser()
    if config.synthetic_preset is not None:
        written = synthetic.ensure(config.synthetic_preset, directory)
        return Weights(synthetic_name(config.synthetic_preset), str(written), synthetic=True)
    if not directory.is_dir():
        raise RuntimeError(f"model.source {config.source!r} is not a directory. {HOW_TO_GET_WEIGHTS}")
    return Weights(config.source, str(directory), synthetic=False)


def _from_hub(config: ModelConfig) -> Weights:
    """From the local cache, else downloaded; a hub that cannot be reached makes it the fallback's turn."""
    try:
        return Weights(config.source, hub.fetch(config.source, config.cache_dir), synthetic=False)
    except hub.HubUnavailable as exc:
        return _fallback(config, str(exc))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fallback(config: ModelConfig, why: str) -> Weights:
    if config.synthetic_preset is None:
        raise RuntimeError(f"cannot load {config.source}: {why}. {HOW_TO_GET_WEIGHTS}")
    path = synthetic.ensure(config.synthetic_preset, SYNTHETIC_DIR / config.synthetic_preset).resolve()
    announce_synthetic(config, why, path)
    return Weights(synthetic_name(config.synthetic_preset), str(path), synthetic=True)


def synthetic_name(preset: str) -> str:
    """What /health, /v1/models and the console call random weights: the preset (its shape and rate), never
    the hub id or directory they stand in for."""
    return f"synthetic:{preset}"


HOW_TO_GET_WEIGHTS = (
    "To speak with real weights, either: download the release on a machine that can reach the hub "
    "(hf download <id> --local-dir DIR) and set model.source to that directory; or point "
    "HF_ENDPOINT at a mirror of the hub (e.g. HF_ENDPOINT=https://hf-mirror.com); or set model.source to "
    "the id of the release on another hub you can reach."
)


def announce_synthetic(config: ModelConfig, why: str, path: Path) -> None:
    """The one banner a console must not scroll past: printed as a block for people, logged for machines."""
    lines = [
        f"SYNTHETIC WEIGHTS: model {config.name!r} SPEAKS NOISE.",
        f"Wanted {config.source}, but {why}.",
        f"Serving the random-weight {config.synthetic_preset} checkpoint in {path} instead.",
        *textwrap.wrap(HOW_TO_GET_WEIGHTS, 96),
    ]
    width = max(map(len, lines))
    rule = "!" * (width + 4)
    print("\n".join([rule, *(f"! {line.ljust(width)} !" for line in lines), rule]), file=sys.stderr, flush=True)
    logger.warning(" ".join(lines))
