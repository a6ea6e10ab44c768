"""The ingress deployment: FastAPI app served by Ray Serve, one router per API family."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import faults, metrics
from serve_app.config import AppConfig
from serve_app.ingress import (
    adapters,
    console,
    forms,
    jobs,
    lexicons,
    openai,
    playground,
    status,
    tts,
    usage,
    voices,
    ws,
)
from serve_app.ingress.auth import Keyring
from serve_app.ingress.edge import EdgeMiddleware
from serve_app.ingress.error_responses import install_error_handlers
from serve_app.ingress.job_requests import JobBuilder
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.replica_reports import ReplicaReports
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.store.adapter_store import AdapterStore, declared
from serve_app.store.job_store import JobStore, application_root
from serve_app.store.lexicon_store import LexiconStore
from serve_app.store.usage_store import UsageLedger, keep_flushed
from serve_app.store.voice_store import VoiceStore
from serve_app.timing.aligner import Aligner

DESCRIPTION = """
Streaming text-to-speech with [VoxCPM](https://github.com/OpenBMB/VoxCPM) on Ray Serve.

`POST /api/tts/stream` answers with one WAV header of unknown length followed by PCM16 as it
is generated: concatenating the chunks gives one playable file. Errors are JSON
`{"error": {"code", "message", "field"}}`.

`WebSocket /api/tts/ws` (not listed below: OpenAPI has no WebSockets) speaks text as it arrives, sentence
by sentence, for voice agents: JSON messages in, JSON events and binary PCM out (see the README).
"""


def create_app() -> FastAPI:
    app = FastAPI(title="VoxCPM Serve", version=importlib.metadata.version("voxcpm-serve"), description=DESCRIPTION)
    app.include_router(tts.router)
    app.include_router(openai.router)
    app.include_router(ws.router)
    app.include_router(voices.router)
    app.include_router(adapters.router)
    app.include_router(lexicons.router)
    app.include_router(jobs.router)
    app.include_router(usage.router)
    app.include_router(playground.router)
    app.mount("/playground", playground.assets, name="playground")
    app.include_router(status.router)
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware)
    app.add_middleware(console.RequestLog)  # outermost: it sees every answer, the edge's refusals too
    return app


fastapi_app = create_app()


# Streams pass through the ingress too: an ingress replica being replaced waits for them as long as a model
# replica does (Serve's default is 20 s). Its health is checked as often as a model replica's (model/deployment.py).
@serve.deployment(
    name="TTSIngress",
    max_ongoing_requests=64,
    graceful_shutdown_timeout_s=60,
    health_check_period_s=5.0,
    health_check_timeout_s=10.0,
)
@serve.ingress(fastapi_app)
class TTSIngress:
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        status_board: DeploymentHandle,
        job_runner: DeploymentHandle,
        config: AppConfig,
    ) -> None:
        self.config = config  # read by the edge middleware (rate limits, caps, CORS, body cap)
        self.keyring = Keyring(config.access)  # the keys and their tenants, from the config and the environment
        console.announce_access(self.keyring)
        forms.strict_utf8_forms()  # here, in the replica's process: the app itself arrives pickled by value
        self.models = ModelClient(models, config.default, config.limits.overload_retries)
        voices = VoiceStore(config.voices_dir, config.access.quotas)
        adapter_store = AdapterStore(config.adapters_dir, config.access.quotas, declared(config))
        lexicon_store = LexiconStore(config.lexicons_dir, config.access.quotas)
        for store in (voices, adapter_store, lexicon_store):
            store.recover()  # what a crash of any replica left in the shared stores
        self.requests = RequestBuilder(self.models, voices, adapter_store, lexicon_store, config.limits)
        job_store = JobStore(application_root(config.jobs_dir, serve.get_replica_context().app_name))
        self.jobs = jobs.JobDesk(JobBuilder(self.requests, job_store, config), job_store, job_runner)
        self.aligner = Aligner.load(config.aligner) if config.aligner is not None else None
        self.usage = UsageLedger(config.usage_dir, f"ingress-{serve.get_replica_context().replica_id.unique_id}")
        metrics.usage().sink = self.usage.add
        self._usage_flushed = asyncio.get_running_loop().create_task(keep_flushed(self.usage))
        self.reports = ReplicaReports(status_board)
        announcing = console.announce_when_ready(self.reports, self.models.model_names)
        self._announcing = asyncio.get_running_loop().create_task(announcing)

    async def check_health(self) -> None:
        """Serve's probe: this replica's poller of the model replicas' reports still runs (``replica_reports.py``)."""
        self.reports.check()

    def __del__(self) -> None:
        """As Serve stops the replica: what it counted since the last write, written."""
        with contextlib.suppress(OSError, AttributeError):
            self.usage.flush()

    async def inject_fault(self) -> None:
        """Tests only (``faults.py``): the status poller stops, as a task that crashed would."""
        faults.allowed()
        self.reports.close()
