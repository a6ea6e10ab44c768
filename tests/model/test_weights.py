"""Which weights a replica loads (serve_app/model/weights.py), decided without the network: an unreachable hub falls
back to the synthetic checkpoint fast and says so; a local directory or a cached release is served as real."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve_app.config import ModelConfig
from serve_app.hub import HUB_PROBE_TIMEOUT_S
from serve_app.model import synthetic
from serve_app.model.weights import resolve
from tests.conftest import REPO, REPORT_WAIT_S, Service, extra_app, wait_until

RELEASE = "openbmb/VoxCPM-0.5B"


@pytest.fixture(scope="module")
def real_architecture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory voxcpm loads as it would a release (random weights, but nothing says so)."""
    return synthetic.build("tiny-voxcpm1.5", tmp_path_factory.mktemp("weights") / "local-release")


def resolved_in_a_fresh_process(tmp_path: Path, endpoint: str, **model: object) -> tuple[dict, str, float]:
    """``resolve`` as a replica runs it: HF_ENDPOINT and an empty cache in its environment, from ``tmp_path``."""
    config = ModelConfig(source=RELEASE, **model).model_dump_json()
    script = (
        "import dataclasses, json, sys\n"
        "from serve_app.config import ModelConfig\n"
        "from serve_app.model.weights import resolve\n"
        f"print(json.dumps(dataclasses.asdict(resolve(ModelConfig.model_validate_json({config!r})))))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0 or "synthetic_preset" not in model, done.stderr[-2000:]
    weights = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {}
    return weights, done.stderr, elapsed


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A hub that accepts connections and never answers (a firewall that drops, a hung mirror)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_an_unreachable_hub_falls_back_to_synthetic_weights_loudly(tmp_path: Path) -> None:
    weights, console, _ = resolved_in_a_fresh_process(
        tmp_path, f"http://127.0.0.1:{closed_port()}", synthetic_preset="tiny-voxcpm1.5"
    )
    assert weights["synthetic"] is True and weights["source"] == "synthetic:tiny-voxcpm1.5"  # not the release
    assert Path(weights["path"]) == tmp_path / "checkpoints" / "tiny-voxcpm1.5"
    assert (Path(weights["path"]) / "model.safetensors").is_file()
    assert "SYNTHETIC WEIGHTS: model 'voxcpm' SPEAKS NOISE." in console
    assert "the hub at http://127.0.0.1:" in console and "cannot be reached (ConnectError" in console
    for remedy in ("--local-dir", "HF_ENDPOINT", "another hub"):
        assert remedy in console


def test_a_hub_that_never_answers_costs_a_bounded_wait(tmp_path: Path, silent_hub: str) -> None:
    started = time.monotonic()
    weights, console, elapsed = resolved_in_a_fresh_process(tmp_path, silent_hub, synthetic_preset="tiny-voxcpm1.5")
    assert weights["synthetic"] is True
    assert f"cannot be reached (ReadTimeout after {HUB_PROBE_TIMEOUT_S:.0f}." in console
    # the probe's wait, plus starting Python and writing the tiny checkpoint on a busy machine
    assert elapsed < HUB_PROBE_TIMEOUT_S + 60, time.monotonic() - started


def test_without_a_fallback_an_unreachable_hub_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    weights, console, _ = resolved_in_a_fresh_process(tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert weights == {}
    assert "cannot load openbmb/VoxCPM-0.5B: the hub at" in console and "HF_ENDPOINT" in console


def test_a_local_directory_of_a_real_architecture_is_served_as_real(
    real_architecture: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    weights = resolve(ModelConfig(source=str(real_architecture), gpu_source=RELEASE))
    assert (weights.path, weights.synthetic) == (str(real_architecture), False)
    assert "SYNTHETIC" not in capfd.readouterr().err


def test_a_missing_local_directory_is_named() -> None:
    with pytest.raises(RuntimeError, match=r"model.source '/nonexistent/voxcpm' is not a directory"):
        resolve(ModelConfig(source="/nonexistent/voxcpm"))


def test_a_downloaded_release_loads_from_the_cache_without_the_hub(
    tmp_path: Path, real_architecture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second start: the release is in the Hugging Face cache, so the hub is not asked at all."""
    from huggingface_hub import constants

    revision = "0" * 40
    repo = tmp_path / "hub" / f"models--{RELEASE.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / revision).symlink_to(real_architecture, target_is_directory=True)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    weights = resolve(ModelConfig(source=RELEASE, cache_dir=str(tmp_path / "hub"), synthetic_preset="tiny-voxcpm1.5"))
    assert weights.synthetic is False and Path(weights.path).resolve() == real_architecture.resolve()


def test_health_and_models_say_which_weights_are_synthetic(service: Service, checkpoints: Path) -> None:
    """The session's model was written from a synthetic preset; the same directory without one is a local
    checkpoint of a real architecture, served as real."""
    health = requests.get(f"{service.url}/health", timeout=10).json()["models"]
    assert [(m["synthetic"], m["source"]) for m in health] == [(True, "synthetic:tiny-voxcpm1.5")]
    assert [m["synthetic"] for m in requests.get(f"{service.url}/v1/models", timeout=10).json()["data"]] == [True]
    with extra_app(service, checkpoints, "real-weights", synthetic_preset=None) as url:
        assert wait_until(lambda: requests.get(f"{url}/health", timeout=10).status_code == 200, REPORT_WAIT_S)
        health = requests.get(f"{url}/health", timeout=10).json()
        listed = requests.get(f"{url}/v1/models", timeout=10).json()["data"]
    # a local checkpoint by its directory's name: the host's paths are not for clients
    assert [(m["synthetic"], m["source"]) for m in health["models"]] == [(False, "tiny-voxcpm1.5")]
    assert [m["synthetic"] for m in listed] == [False]


def test_download_progress_is_drawn_a_line_at_a_time_even_with_tqdm_disabled() -> None:
    """Replica stderr reaches the console a line at a time, and the configs set TQDM_DISABLE (read by tqdm as
    it is imported) to keep voxcpm's per-generation bar out: the download's bar is drawn all the same."""
    script = (
        "from serve_app import hub\n"
        "hub.PROGRESS_EVERY_S = 0.0\n"
        "bar = hub._LineProgress(total=3_000_000, unit='B', unit_scale=True, desc='Downloading bytes')\n"
        "for _ in range(3): bar.update(1_000_000)\n"
        "bar.close()\n"
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("Downloading bytes")]
    assert "\r" not in done.stderr and len(lines) >= 3, done.stderr[-2000:]
    assert lines[-1].startswith("Downloading bytes: 100%")
