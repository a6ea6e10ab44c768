"""What every benchmark needs: a local service, timed HTTP streams, statistics and result files.

Timings are compared as ratios and differences within one run: absolute numbers on a shared
2-core machine drift from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

os.environ.setdefault("TQDM_DISABLE", "1")  # voxcpm's per-step progress bar, in engines run in-process here

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))  # the helpers are the tests' own
from tests.helpers import free_port, tone_wav  # noqa: E402

LOCAL_CONFIG = REPO / "configs" / "local.yaml"
WAV_HEADER_BYTES = 44

# Variants of Ray Serve's data plane: cluster-level environment variables (see overhead.py).
INLINE_LOOPS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
DATA_PLANES = {
    "default": {},
    "inline-loops": INLINE_LOOPS,
    "haproxy": {**INLINE_LOOPS, "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}

SEED_SENTENCE = "你好，这是VoxCPM流式语音合成测试。"
# The synthetic tokenizer is per character (a real one packs several English letters per token),
# so English runs about four times longer on the synthetic model than with real weights.
LONG_CHINESE = (
    "语音合成技术正在改变人们获取信息的方式。流式合成让第一段声音在几百毫秒内响起，而不必等待整段文字全部生成。"
)
LONG_ENGLISH = "Streaming speech plays the first words almost at once, while the model is still working."


@dataclass
class StreamTiming:
    """One HTTP answer as a listener would see it: when each piece arrived and how much audio it held."""

    ttfb_s: float
    total_s: float
    arrivals_s: list[float] = field(default_factory=list)  # since the request was sent
    audio_bytes: list[int] = field(default_factory=list)  # PCM16 bytes in each piece
    sample_rate: int = 0

    @property
    def audio_s(self) -> float:
        return sum(self.audio_bytes) / 2 / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: generation time over audio time (< 1 is faster than real time)."""
        return self.total_s / self.audio_s

    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals_s, self.arrivals_s[1:], strict=False)]

    def underruns(self) -> tuple[int, float]:
        """Stalls of a player that starts at the first byte: (count, seconds of silence in total)."""
        played_until = self.arrivals_s[0]  # the player's clock: when its buffer runs dry
        stalls, stalled_s = 0, 0.0
        for arrival, size in zip(self.arrivals_s, self.audio_bytes, strict=True):
            if arrival > played_until:  # never for the first piece: the player starts with it
                stalls += 1
                stalled_s += arrival - played_until
                played_until = arrival
            played_until += size / 2 / self.sample_rate
        return stalls, stalled_s


def time_request(url: str, path: str, data: dict[str, Any], reference: Path | None = None) -> StreamTiming:
    """POST a form, read the answer as it arrives (chunk_size=None: pieces as the server sends them)."""
    files = {"prompt_audio": reference.open("rb")} if reference else None
    started = time.perf_counter()
    try:
        response = requests.post(f"{url}{path}", data=data, files=files, stream=True, timeout=600)
        response.raise_for_status()
        timing = StreamTiming(ttfb_s=0.0, total_s=0.0, sample_rate=int(response.headers["x-sample-rate"]))
        header = WAV_HEADER_BYTES
        for piece in response.iter_content(chunk_size=None):
            timing.arrivals_s.append(time.perf_counter() - started)
            timing.audio_bytes.append(len(piece) - min(header, len(piece)))
            header -= min(header, len(piece))
    finally:
        if files:
            files["prompt_audio"].close()
    timing.ttfb_s = timing.arrivals_s[0]
    timing.total_s = time.perf_counter() - started
    return timing


@dataclass
class Outcomes:
    """What concurrent clients got: streams, refusals (503, with how long each took) and errors."""

    streams: list[StreamTiming] = field(default_factory=list)
    shed_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, url: str, path: str, form: dict[str, Any]) -> None:
        """One request, recorded; a refused one waits its Retry-After, as the contract asks of clients."""
        started = time.perf_counter()
        try:
            timing = time_request(url, path, form)
        except requests.HTTPError as exc:
            with self.lock:
                if exc.response.status_code == 503:
                    self.shed_ms.append(1e3 * (time.perf_counter() - started))
                else:
                    self.errors.append(str(exc.response.status_code))
            time.sleep(float(exc.response.headers.get("retry-after", 1)))
            return
        except requests.RequestException as exc:
            with self.lock:
                self.errors.append(type(exc).__name__)
            return
        with self.lock:
            self.streams.append(timing)


def run_clients(count: int, client: Callable[[], None]) -> float:
    """``count`` concurrent copies of ``client``; the wall-clock seconds until all have returned."""
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        for _ in range(count):
            pool.submit(client)
    return time.perf_counter() - started


async def timed_stream(engine: Any, request: Any) -> StreamTiming:
    """One stream's chunk arrivals. The engines hand over host arrays, so a chunk's arrival is its time: no
    device synchronisation here, which on a GPU would also wait for the batch's next step."""
    started = time.perf_counter()
    timing = StreamTiming(ttfb_s=0.0, total_s=0.0, sample_rate=engine.info.sample_rate)
    async for chunk in engine.stream(request, lambda: None):
        timing.arrivals_s.append(time.perf_counter() - started)
        timing.audio_bytes.append(2 * len(chunk))  # as PCM16, like the HTTP benchmarks count it
    timing.ttfb_s, timing.total_s = timing.arrivals_s[0], time.perf_counter() - started
    return timing


def engine_timings(engine: Any, streams: int, inference_timesteps: int) -> tuple[list[StreamTiming], float]:
    """``streams`` streams of the seed sentence sent at once to one engine (the interface the model deployment
    uses, in this process): each one's timing, and the wall time."""
    from serve_app.model.types import SynthesisRequest

    request = SynthesisRequest(text=SEED_SENTENCE, inference_timesteps=inference_timesteps, retry_badcase=False)

    async def run() -> tuple[list[StreamTiming], float]:
        started = time.perf_counter()
        timings = await asyncio.gather(*(timed_stream(engine, request) for _ in range(streams)))
        return list(timings), time.perf_counter() - started

    return asyncio.run(run())


def stream_stats(timings: Sequence[StreamTiming], wall_s: float) -> dict[str, Any]:
    """What listeners experienced over a run: first byte, speed, cadence, underruns, throughput."""
    return {
        "wall_s": wall_s,
        "audio_s_per_wall_s": sum(t.audio_s for t in timings) / wall_s,
        "ttfb_ms": summary([1e3 * t.ttfb_s for t in timings]),
        "rtf": summary([t.rtf for t in timings]),
        "gap_ms": summary([1e3 * g for t in timings for g in t.gaps_s()]),
        "streams_with_underrun": sum(1 for t in timings if t.underruns()[0]),
        "underrun_stall_s": summary([t.underruns()[1] for t in timings]),
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "median": statistics.median(ordered),
        "p90": pct(90),
        "p95": pct(95),
        "p99": pct(99),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def machine() -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "device": _accelerator(),
    }


def _accelerator() -> str:
    """The machine's GPU, asked of torch only where the benchmark imported it (importing it takes seconds)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "CPU only"


def save(name: str, payload: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **payload}, ensure_ascii=False, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"saved {RESULTS / name}.json, .md")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def reference_wav(path: Path) -> Path:
    """Three seconds of a gliding tone at 16 kHz: a stand-in reference recording."""
    return tone_wav(path, seconds=3.0, hz=180.0, glide_hz_per_s=40.0)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def local_service(
    replicas: int = 1,
    env: Mapping[str, str] | None = None,
    model_deployment: Mapping[str, Any] | None = None,
    metrics_port: int | None = None,
    args_overrides: Mapping[str, Any] | None = None,
    **model_overrides: Any,
) -> Iterator[str]:
    """configs/local.yaml with its synthetic checkpoint, on a fresh local Ray cluster and a free loopback port;
    yields the base URL.

    ``env`` is set for the cluster's processes (Ray Serve reads its data-plane flags from there);
    ``model_deployment`` overrides the model's ``deployments:`` entry, ``model_overrides`` its ``args``,
    ``args_overrides`` the app's ``args`` (the stores are this run's own, in a temporary directory);
    with ``metrics_port``, Ray's Prometheus endpoint is there, with samples at most a second old.
    """
    deployment = {"num_replicas": replicas, **(model_deployment or {})}
    # the synthetic checkpoint, as the tests use it: no wait on a model hub, the same model every run
    model_overrides = {"source": str(REPO / "checkpoints" / "tiny-voxcpm1.5"), **model_overrides}
    with environment({"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}):
        yield from _local_service(deployment, model_overrides, metrics_port, dict(args_overrides or {}))


def _local_service(
    model_deployment: dict[str, Any],
    model_overrides: dict[str, Any],
    metrics_port: int | None,
    args_overrides: dict[str, Any],
) -> Iterator[str]:
    import ray
    from ray import serve

    from serve_app.app import from_config_file

    port = free_port()
    metrics = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 1000}}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, **(metrics if metrics_port else {}))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        with tempfile.TemporaryDirectory() as stores:  # saved voices, jobs and usage of this run only
            dirs = {f"{name}_dir": f"{stores}/{name}" for name in ("voices", "adapters", "jobs", "usage")}
            app, _ = from_config_file(
                LOCAL_CONFIG,
                deployment_overrides={"VoxCPMModel": model_deployment},
                args_overrides={**dirs, **args_overrides},
                **model_overrides,
            )
            serve.run(app, name="voxcpm", route_prefix="/")
            yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def synthetic_checkpoint(preset: str, out: Path, dtype: str | None = None) -> Path:
    """``synthetic.build`` on a thread that then ends, taking its OpenMP pool with it: torch work left on
    the main thread would slow the engine's own thread, as nothing in a served replica does
    (serve_app/model/engine.py, benchmarks/model_thread.py)."""
    from serve_app.model import synthetic

    with ThreadPoolExecutor(max_workers=1) as builder:
        return builder.submit(synthetic.build, preset, out, dtype=dtype).result()


def histogram_buckets(metrics_port: int, names: Sequence[str]) -> dict[str, dict[float, float]]:
    """Each named histogram on Ray's Prometheus endpoint as {upper bound: cumulative count}, summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    buckets: dict[str, dict[float, float]] = {name: {} for name in names}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_bucket")
            if name in buckets and sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[name][bound] = buckets[name].get(bound, 0.0) + sample.value
    return buckets


def png(figure: Any, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    print(f"saved {path}")
    return path
