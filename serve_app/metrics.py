"""Our Prometheus metrics, recorded through ``ray.serve.metrics``.

Ray exports them on each node's metrics endpoint next to Serve's own (names gain a ``ray_``
prefix; Serve adds the deployment, replica and application tags). Every metric is labelled by
model and route; configs/grafana-dashboard.json charts them.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from ray.serve import metrics

SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
# Chunk gaps: a stream's chunks come tens of milliseconds apart; a listener hears a stall past the audio one carries.
CHUNK_GAP_SECONDS = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56]
REAL_TIME_FACTORS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0]
TAGS = ("model", "route")


@dataclass
class RequestTrace:
    """One request as the ingress sees it: its id, route, model, start and audio, for metrics and logs."""

    request_id: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    model: str = "none"
    tenant: str = ""  # who asked (the configured tenants only: the edge authenticated them), for usage
    characters: int = 0  # of text in, as sent
    first_audio_s: float | None = None  # after the start, once the first audio byte is out
    audio_seconds: float = 0.0  # sent, once complete

    @property
    def ids(self) -> dict[str, str]:
        """What the model replica gets to know about the request (for its logs and metrics)."""
        return {"request_id": self.request_id, "route": self.route}

    @property
    def tags(self) -> dict[str, str]:
        return {"model": self.model, "route": self.route}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class UsageMetrics:
    """What each tenant used: requests completed, characters in, audio seconds out, job items; ``kind``:
    ``request`` (a live route's) or ``job``. Tenants are the configured ones (the keys' tenants), so the
    labels are bounded. The same amounts go to the usage ledger (``store/usage_store.py``) through ``sink``,
    which the replica that records them sets."""

    def __init__(self) -> None:
        tags = ("tenant", "kind")
        self.requests = metrics.Counter("voxcpm_tenant_requests", description="Requests completed.", tag_keys=tags)
        self.characters = metrics.Counter("voxcpm_tenant_characters", description="Text in.", tag_keys=tags)
        self.audio_seconds = metrics.Counter(
            "voxcpm_tenant_audio_seconds", description="Audio out, in seconds.", tag_keys=tags
        )
        self.job_items = metrics.Counter("voxcpm_tenant_job_items", description="Job items rendered.", tag_keys=tags)
        self.sink: Callable[..., None] | None = None

    def record(self, tenant: str, kind: str, characters: int, audio_seconds: float) -> None:
        tags = {"tenant": tenant, "kind": kind}
        job_items = 1 if kind == "job" else 0
        (self.job_items if job_items else self.requests).inc(1, tags=tags)
        self.characters.inc(characters, tags=tags)
        self.audio_seconds.inc(audio_seconds, tags=tags)
        if self.sink is not None:
            amounts = {"characters": characters, "audio_seconds": audio_seconds}
            self.sink(tenant, **amounts, **({"job_items": 1} if job_items else {"requests": 1}))


class IngressMetrics:
    """What clients experience: latency to the first byte and to the end, speed, volume, errors."""

    def __init__(self) -> None:
        self.time_to_first_byte = metrics.Histogram(
            "voxcpm_time_to_first_byte_seconds",
            description="From the request reaching the ingress to its first audio byte.",
            boundaries=SECONDS,
            tag_keys=TAGS,
        )
        self.request_duration = metrics.Histogram(
            "voxcpm_request_duration_seconds",
            description="From the request reaching the ingress to its last audio byte.",
            boundaries=SECONDS,
            tag_keys=TAGS,
        )
        self.real_time_factor = metrics.Histogram(
            "voxcpm_real_time_factor",
            description="Request duration divided by the audio's duration (below 1: faster than real time).",
            boundaries=REAL_TIME_FACTORS,
            tag_keys=TAGS,
        )
        self.audio_seconds = metrics.Counter(
            "voxcpm_audio_seconds", description="Seconds of audio sent to clients.", tag_keys=TAGS
        )
        self.active_streams = metrics.Gauge(
            "voxcpm_active_streams", description="Responses sending audio now, on this replica.", tag_keys=TAGS
        )
        self.stream_chunk_gap = metrics.Histogram(
            "voxcpm_stream_chunk_gap_seconds",
            description="Between consecutive audio chunks of a stream as the ingress receives them. Against "
            "voxcpm_generation_chunk_gap_seconds it tells a slow model from slow delivery.",
            boundaries=CHUNK_GAP_SECONDS,
            tag_keys=TAGS,
        )
        self.errors = metrics.Counter(
            "voxcpm_errors",
            description="Requests answered with an error, or whose stream broke, by error code.",
            tag_keys=(*TAGS, "code"),
        )
        self.open_websockets = metrics.Gauge(
            "voxcpm_open_websockets",
            description="WebSocket conversations open on this replica (against websocket.max_connections).",
        )
        self._streams: Tally[tuple[str, str]] = Tally()

    def stream_opened(self, trace: RequestTrace) -> None:
        self._set_streams(trace, +1)

    def stream_closed(self, trace: RequestTrace) -> None:
        self._set_streams(trace, -1)

    def _set_streams(self, trace: RequestTrace, change: int) -> None:
        key = (trace.model, trace.route)
        self._streams[key] += change
        self.active_streams.set(self._streams[key], tags=trace.tags)

    def first_byte(self, trace: RequestTrace) -> None:
        trace.first_audio_s = trace.elapsed()
        self.time_to_first_byte.observe(trace.first_audio_s, tags=trace.tags)

    def completed(self, trace: RequestTrace, audio_seconds: float) -> None:
        elapsed = trace.elapsed()
        trace.audio_seconds = audio_seconds
        self.request_duration.observe(elapsed, tags=trace.tags)
        self.audio_seconds.inc(audio_seconds, tags=trace.tags)
        if audio_seconds > 0:
            self.real_time_factor.observe(elapsed / audio_seconds, tags=trace.tags)
        if trace.tenant:
            usage().record(trace.tenant, "request", trace.characters, audio_seconds)

    def failed(self, trace: RequestTrace, code: str) -> None:
        self.errors.inc(tags={**trace.tags, "code": code})


class ModelMetrics:
    """What the model replicas do: how long generations wait for the model, and prompt-cache use."""

    def __init__(self) -> None:
        self.queue_wait = metrics.Histogram(
            "voxcpm_queue_wait_seconds",
            description="From a replica accepting a generation to the model starting it.",
            boundaries=SECONDS,
            tag_keys=TAGS,
        )
        self.generation_chunk_gap = metrics.Histogram(
            "voxcpm_generation_chunk_gap_seconds",
            description="Between consecutive audio chunks of a streamed generation as the model replica sends them.",
            boundaries=CHUNK_GAP_SECONDS,
            tag_keys=TAGS,
        )
        self.generations_in_flight = metrics.Gauge(
            "voxcpm_generations_in_flight",
            description="Generations running or queued on this replica.",
            tag_keys=("model",),
        )
        self.prompt_cache = metrics.Counter(
            "voxcpm_prompt_cache_lookups",
            description="Reference prompts looked up in the replica's cache, by result (hit or miss).",
            tag_keys=("model", "result"),
        )
        self.cuda_graphs_on = metrics.Gauge(
            "voxcpm_cuda_graphs_on",
            description="1 where the replica's steps replay CUDA graphs; 0 where they run eagerly, and why (reason: "
            "not asked for, no GPU, capture failed, mismatch), as /health's graphs says.",
            tag_keys=("model", "reason"),
        )

    def cuda_graphs(self, model: str, state: str) -> None:
        """Set once at the replica's start, from its ``ModelInfo.graphs`` ("on" or "off: <reason>")."""
        on = state == "on"
        self.cuda_graphs_on.set(int(on), tags={"model": model, "reason": "none" if on else state.removeprefix("off: ")})


class Cadence:
    """Observes the time between consecutive ``tick()`` calls: how evenly a stream's chunks pass a point."""

    def __init__(self, histogram: metrics.Histogram, tags: dict[str, str]) -> None:
        self._histogram = histogram
        self._tags = tags
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._histogram.observe(now - self._last, tags=self._tags)
        self._last = now


@cache
def ingress() -> IngressMetrics:
    """Created on first use, inside the replica (Ray metrics belong to the process that records them)."""
    return IngressMetrics()


@cache
def model() -> ModelMetrics:
    return ModelMetrics()


@cache
def usage() -> UsageMetrics:
    return UsageMetrics()
