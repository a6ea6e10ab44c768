"""Checkpoints from the Hugging Face hub, without hanging on a hub that cannot be reached.

``huggingface_hub`` retries with timeouts that add up to minutes, so a start must learn quickly whether the
hub answers: a checkpoint is looked up in the local cache first (a second start is offline), then, after a
reachability probe of the hub (``HF_ENDPOINT``) bounded by a few seconds, downloaded with a progress line
every few seconds and a one-line summary. What cannot be had is a ``HubUnavailable`` saying why; the caller
decides the fallback (``model/weights.py``: a synthetic checkpoint; ``timing/aligner.py``: estimated times).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from pathlib import Path

import httpx
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import tqdm as hf_tqdm

logger = logging.getLogger("ray.serve")

HUB_PROBE_TIMEOUT_S = 3.0  # the longest a start waits to learn that the hub cannot be reached
PROGRESS_EVERY_S = 5.0


class HubUnavailable(Exception):
    """The checkpoint is neither cached nor downloadable now; the message says why."""


def fetch(source: str, cache_dir: str | None = None) -> str:
    """The local directory of hub checkpoint ``source``: from the cache, else downloaded."""
    try:
        return snapshot_download(source, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        pass  # not downloaded yet
    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise HubUnavailable(f"{source} is not in the local cache and HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(endpoint)
    if unreachable:
        raise HubUnavailable(f"the hub at {endpoint} cannot be reached ({unreachable})")
    try:
        return _download(source, cache_dir)
    except (LocalEntryNotFoundError, httpx.TransportError) as exc:  # the hub went away during the download
        raise HubUnavailable(f"downloading {source} from {endpoint} failed ({type(exc).__name__})") from None


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


def _download(source: str, cache_dir: str | None) -> str:
    logger.info("downloading %s from %s (cached for the next start)", source, constants.ENDPOINT)
    path = snapshot_download(source, cache_dir=cache_dir, tqdm_class=_LineProgress)
    size = sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
    logger.info("downloaded %s: %.2f GB in %s", source, size / 1e9, path)
    return path


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
