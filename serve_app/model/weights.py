"""Which weights a model replica loads, decided before voxcpm sees them.

A first start must either speak with real weights or say plainly that it does not, and it must
never hang on a hub it cannot reach (CI, air-gapped machines, the development machines):
``huggingface_hub`` retries with timeouts that add up to minutes. So the decision is made here:

- a local directory is loaded as it is: real weights, unless the config names a
  ``synthetic_preset``, which writes a synthetic (random-weight) checkpoint there if none is
  there yet (tests and local development);
- a hub id is looked up in the local cache first (a second start is offline), then, after a
  reachability probe of the hub (``HF_ENDPOINT``) bounded by a few seconds, downloaded with a
  progress bar and a one-line summary of size and destination;
- a hub that cannot be reached (or ``HF_HUB_OFFLINE=1`` with nothing cached) falls back to the
  config's ``synthetic_preset``, built under ``checkpoints/``, with a banner that says the service
  speaks noise and how to get real weights; the model is then marked synthetic (``/health``,
  ``/v1/models``, the playground). Without a preset it is an error that says the same.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import tqdm as hf_tqdm

from serve_app.config import ModelConfig
from serve_app.model import synthetic

logger = logging.getLogger("ray.serve")

HUB_PROBE_TIMEOUT_S = 3.0  # the longest a start waits to learn that the hub cannot be reached
SYNTHETIC_DIR = Path("checkpoints")  # fallback checkpoints, relative to where `serve run` starts
PROGRESS_EVERY_S = 5.0


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
        return Weights(config.source, str(synthetic.ensure(config.synthetic_preset, directory)), synthetic=True)
    if not directory.is_dir():
        raise RuntimeError(f"model.source {config.source!r} is not a directory. {HOW_TO_GET_WEIGHTS}")
    return Weights(config.source, str(directory), synthetic=False)


def _from_hub(config: ModelConfig) -> Weights:
    """From the local cache, else downloaded; a hub that cannot be reached makes it the fallback's turn."""
    try:
        cached = snapshot_download(config.source, cache_dir=config.cache_dir, local_files_only=True)
        return Weights(config.source, cached, synthetic=False)
    except LocalEntryNotFoundError:
        pass  # not downloaded yet
    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return _fallback(config, f"{config.source} is not in the local cache and HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(endpoint)
    if unreachable:
        return _fallback(config, f"the hub at {endpoint} cannot be reached ({unreachable})")
    try:
        return Weights(config.source, _download(config), synthetic=False)
    except (LocalEntryNotFoundError, httpx.TransportError) as exc:  # the hub went away during the download
        return _fallback(config, f"downloading {config.source} from {endpoint} failed ({type(exc).__name__})")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def is_local(source: str) -> bool:
    """A directory (existing, absolute, or written ./dir) rather than a hub id such as openbmb/VoxCPM1.5."""
    return os.path.isdir(source) or source.startswith(("/", ".", "~")) or source.count("/") != 1


def public_source(source: str) -> str:
    """What /health and the console show of a source: a hub id as it is, a local checkpoint by its directory's
    name (its path tells anyone who asks how the host's disks are laid out)."""
    return Path(source).name if is_local(source) else source


def hub_unreachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached within ``timeout_s`` (None: it answered, whatever the status)."""
    started = time.monotonic()
    try:
        httpx.head(endpoint, timeout=timeout_s)  # httpx, as huggingface_hub: the same proxies apply
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {time.monotonic() - started:.1f} s"
    return None


def _download(config: ModelConfig) -> str:
    logger.info("downloading %s from %s (cached for the next start)", config.source, constants.ENDPOINT)
    path = snapshot_download(config.source, cache_dir=config.cache_dir, tqdm_class=_LineProgress)
    size = sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
    logger.info("downloaded %s: %.2f GB in %s", config.source, size / 1e9, path)
    return path


def _fallback(config: ModelConfig, why: str) -> Weights:
    if config.synthetic_preset is None:
        raise RuntimeError(f"cannot load {config.source}: {why}. {HOW_TO_GET_WEIGHTS}")
    path = synthetic.ensure(config.synthetic_preset, SYNTHETIC_DIR / config.synthetic_preset).resolve()
    announce_synthetic(config, why, path)
    return Weights(config.source, str(path), synthetic=True)


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


class _LineProgress(hf_tqdm):
    """The hub's progress bars, drawn as one line every few seconds: a replica's stderr reaches the console
    through Ray's log monitor a line at a time, so tqdm's carriage-return redraws would show only at the end.
    Drawn even where TQDM_DISABLE is set (the configs set it to keep voxcpm's per-generation bar out)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.update(disable=False, mininterval=PROGRESS_EVERY_S, file=_Lines(sys.stderr), dynamic_ncols=False)
        super().__init__(*args, **kwargs)


class _Lines(io.TextIOBase):
    """A stream that turns tqdm's carriage returns into new lines."""

    def __init__(self, target: io.TextIOBase) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target.write(text.replace("\r", "\n"))
        return len(text)

    def flush(self) -> None:
        self._target.flush()
