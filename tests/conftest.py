"""One real local Ray cluster and one Serve instance per test session, HTTP on loopback.

The graph is deployed from ``configs/local.yaml`` itself (args and deployment options), with the
synthetic checkpoint written to a session temp dir. A second app, ``configs/multi-model.yaml``
under ``/multi``, serves a VoxCPM1.5- and a VoxCPM2-shaped model side by side, so both
architectures and model routing go through the real stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import requests
import soundfile as sf
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_app.audio.codecs import AudioFormat
from serve_app.audio.decode import AudioBounds
from serve_app.config import ModelConfig, SyntheticPreset
from serve_app.model import synthetic
from serve_app.model.batched.graph_check import FLOAT32_TOLERANCE  # noqa: F401 - the engine's tolerance, for the tests
from serve_app.model.engine import Engine
from serve_app.model.engine_factory import load_engine
from serve_app.store.adapter_store import AdapterStore
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import VoiceStore
from tests.helpers import free_port, tone_wav

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Serve's proxy runs uvicorn, which rewrites the client's address from X-Forwarded-For sent from loopback unless
# this is empty: the session's cluster (started from this process) runs as the images do.
os.environ["FORWARDED_ALLOW_IPS"] = ""

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO / "configs" / "local.yaml"
MULTI_CONFIG = REPO / "configs" / "multi-model.yaml"
V2_MODEL = "voxcpm2-tiny-synthetic"  # the VoxCPM2-shaped model of configs/multi-model.yaml

ADMIN = Principal("admin", admin=True, key_id="test-admin")  # saves shared voices, as the deployment's operator

# The tiny presets' samples per generation step (patch_size x VAE hop at the output rate).
TINY_V15_STEP_FRAMES = 2 * 735
TINY_V2_STEP_FRAMES = 2 * 960


def config_port() -> int:
    """The port configs/local.yaml serves on (7861, the seed's): the seed examples run unchanged."""
    return yaml.safe_load(LOCAL_CONFIG.read_text())["http_options"]["port"]


METRICS_PORT = free_port()  # Ray's Prometheus endpoint for the session cluster


@dataclass(frozen=True)
class Service:
    url: str  # the VoxCPM1.5-shaped app from configs/local.yaml
    multi_url: str  # configs/multi-model.yaml: a VoxCPM1.5- and a VoxCPM2-shaped model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def synthetic_checkpoint(checkpoints: Path) -> Callable[..., Path]:
    """A synthetic checkpoint of a preset (and dtype, default: the preset's), written once per session."""

    def checkpoint(preset: SyntheticPreset, dtype: str | None = None) -> Path:
        directory = checkpoints / f"unit-{preset}-{dtype or 'preset-dtype'}"
        if not (directory / "model.safetensors").exists():
            synthetic.build(preset, directory, dtype=dtype)
        return directory

    return checkpoint


@pytest.fixture(scope="session")
def synthetic_engine(synthetic_checkpoint: Callable[..., Path]) -> Iterator[Callable[..., Engine]]:
    """The one way tests build engines in-process: ``synthetic_engine(preset, engine="voxcpm", dtype=None,
    voices=None, **model_settings)`` loads a synthetic checkpoint of ``preset`` on CPU, as a model replica
    would (``engine_factory.load_engine``), without a warm-up unless asked. Closed at the session's end."""
    loaded: list[Engine] = []

    def load(
        preset: SyntheticPreset,
        engine: str = "voxcpm",
        dtype: str | None = None,
        voices: VoiceStore | None = None,
        adapters: AdapterStore | None = None,
        **settings: Any,
    ) -> Engine:
        source = str(synthetic_checkpoint(preset, dtype))
        options = {"warmup": False, **settings}
        config = ModelConfig(
            name=preset, source=source, synthetic_preset=preset, device="cpu", optimize=False, engine=engine, **options
        )
        loaded.append(load_engine(config, voices, adapters))
        return loaded[-1]

    yield load
    for engine in loaded:
        engine.close()


def stores(checkpoints: Path) -> dict[str, str]:
    """The session's stores (voices, adapters, jobs), shared by every app it deploys."""
    root = checkpoints.parent
    dirs = ("voices", "adapters", "lexicons", "jobs", "usage")
    return {f"{name}_dir": str(root / name) for name in dirs}


@pytest.fixture(scope="session")
def service(checkpoints: Path) -> Iterator[Service]:
    import ray
    from ray import serve

    from serve_app.app import from_config_file

    port = config_port()
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            pytest.exit(f"port {port} is in use (is `make serve` running?); the tests serve there", 2)
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        _system_config={"metrics_report_interval_ms": 1000},  # scrapes see new samples within a second
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # one store of each, shared by both apps
    voices = stores(checkpoints)
    app, _ = from_config_file(LOCAL_CONFIG, args_overrides=voices, source=str(checkpoints / "tiny-voxcpm1.5"))
    serve.run(app, name="voxcpm", route_prefix="/")
    multi_app, _ = from_config_file(
        MULTI_CONFIG,
        args_overrides=voices,
        models_overrides={
            "voxcpm1.5-tiny-synthetic": {"source": str(checkpoints / "tiny-voxcpm1.5")},
            V2_MODEL: {"source": str(checkpoints / "tiny-voxcpm2")},
        },
    )
    serve.run(multi_app, name="multi", route_prefix="/multi")
    base = f"http://localhost:{port}"
    yield Service(url=base, multi_url=f"{base}/multi")
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def url(service: Service) -> str:
    return service.url


@contextlib.contextmanager
def extra_app(
    service: Service,
    checkpoints: Path,
    app_name: str,
    args_overrides: dict | None = None,
    deployments: dict | None = None,
    **model: object,
) -> Iterator[str]:
    """configs/local.yaml's graph deployed as one more app at /<name> of the session's Serve, for tests
    that need their own settings or metrics of their own; deleted afterwards."""
    from ray import serve

    from serve_app.app import from_config_file

    args = {**stores(checkpoints), **(args_overrides or {})}
    model = {"source": str(checkpoints / "tiny-voxcpm1.5"), **model}
    app, _ = from_config_file(LOCAL_CONFIG, 0, deployments, args, **model)
    serve.run(app, name=app_name, route_prefix=f"/{app_name}")
    try:
        yield f"{service.url}/{app_name}"
    finally:
        serve.delete(app_name)


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a 220 Hz tone at 16 kHz: any decodable audio will do as a reference."""
    return tone_wav(tmp_path_factory.mktemp("audio") / "reference.wav")


def ffprobe(path: Path, entries: str) -> str:
    """What FFmpeg's prober reads from ``path``: a second, independent decoder of our output."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


REPORT_WAIT_S = 10  # replicas report every second: ten missed reports is a failure, not a slow machine


def replica_status(url: str) -> dict:
    """The (first) model replica's report in /api/gpu/status, one it made after this call began:
    replicas report on every change and every second, so what happened before is in it."""
    asked = time.time()
    replicas: list[dict] = []

    def reported() -> bool:
        nonlocal replicas
        replicas = requests.get(f"{url}/api/gpu/status", timeout=10).json()["replicas"]
        return bool(replicas) and replicas[0]["reported_at"] > asked

    assert wait_until(reported, REPORT_WAIT_S), f"no report newer than the call within {REPORT_WAIT_S} s: {replicas}"
    return replicas[0]


def in_flight(url: str) -> int:
    """Generations running or waiting on the (first) model replica of the app at ``url``."""
    return replica_status(url)["generations_in_flight"]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def error_of(response: requests.Response) -> dict:
    """The contract's error object, after checking the response is one."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]


def route_error_of(response: requests.Response) -> dict:
    """The error object in the shape of the route that answered: OpenAI's on /v1, the contract's elsewhere."""
    return openai_error_of(response) if "/v1/" in response.request.path_url else error_of(response)


def openai_error_of(response: requests.Response) -> dict:
    """The error object of a /v1 route: OpenAI's fields plus the contract's ``field``."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code", "field"}, body
    assert error["param"] == error["field"], body
    return error


# --- helpers shared by the test modules ---


def decode(body: bytes, fmt: AudioFormat, rate: int) -> tuple[int, float]:
    """(sample rate, seconds) as FFmpeg's decoders read them; raw PCM has no header to read, raw G.711 is read
    at the rate the answer states."""
    if fmt is AudioFormat.PCM:
        return rate, len(body) / 2 / rate
    raw = {"format": G711_DEMUXERS[fmt], "options": {"sample_rate": str(rate)}} if fmt in G711_DEMUXERS else {}
    with av.open(io.BytesIO(body), **raw) as container:
        frames = list(container.decode(audio=0))
    return frames[0].sample_rate, sum(f.samples for f in frames) / frames[0].sample_rate


G711_DEMUXERS = {AudioFormat.ULAW: "mulaw", AudioFormat.ALAW: "alaw"}


# LimitsConfig's defaults: 60 s, 8 channels, 192 kHz, 60 s at 48 kHz stereo, 10 s to decode.
BOUNDS = AudioBounds(max_seconds=60, max_channels=8, max_sample_rate=192_000, max_samples=5_760_000, timeout_s=10)


def within(seconds: float) -> AudioBounds:
    return dataclasses.replace(BOUNDS, max_seconds=seconds)


def encoded(samples: np.ndarray, rate: int, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, **kwargs)
    return buffer.getvalue()


def save_voice(url: str, reference: Path, name: str | None = None, text: str = "参考音频的文本") -> dict:
    """A voice saved over HTTP; without a name, one no other voice has (a name is unique in its tenant)."""
    name = name or f"narrator {uuid.uuid4().hex[:8]}"
    with open(reference, "rb") as audio:
        response = requests.post(f"{url}/api/voices", data={"name": name, "text": text}, files={"audio": audio})
    assert response.status_code == 201, response.text
    return response.json()


def prompt_cache(url: str) -> tuple[int, int]:
    replica = replica_status(url)
    return replica["prompt_cache_hits"], replica["prompt_cache_misses"]


CLI = str(Path(sys.executable).with_name("voxcpm-serve"))


def run(url: str, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--url", url, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120)


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample on the endpoint, by sample name: [(labels, value)]."""
    text = requests.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(value for got, value in samples.get(name, []) if all(got.get(k) == v for k, v in labels.items()))
