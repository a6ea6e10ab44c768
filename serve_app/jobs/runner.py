"""The job runner deployment: renders every unfinished job's items on the model deployments, in the background.

One replica (Serve restarts it if it dies); only the replica holding the store's runner lease starts items
(during a rolling update Serve starts the new replica before the old one has stopped), so none is rendered by
two at once. Its state is the
job store's (``store/job_store.py``): on start, and every ``POLL_S`` (or when an ingress says a job came or
went), it reads which jobs are unfinished and resumes them from their results, so a killed runner, model
replica or the whole service loses at most the items that were in flight, rendered again. Items go to the
model deployments through their handles, at ``background`` priority, so they spread over every model
replica and scale with them; at most ``jobs.replica_share`` of each replica's batch is the runner's at once
(the rest stays free for live requests, which the batched engine also puts first), tenants taking turns
(``queue.py``). Cancelling a job cancels its items' calls, which frees their model slots at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.config import AppConfig
from serve_app.jobs.failures import Then, verdict
from serve_app.jobs.queue import JobQueue, QueuedJob
from serve_app.jobs.render import CHUNK_FORMAT, continues, kept, needs_anchor, request_for, sent_characters
from serve_app.model.remote_errors import model_errors
from serve_app.model.types import ModelInfo, PromptAudio, SegmentEnd, SynthesisRequest
from serve_app.store.adapter_store import AdapterStore, declared
from serve_app.store.job_store import Job, JobStore, PromptRole, application_root
from serve_app.store.usage_store import UsageLedger, keep_flushed
from serve_app.store.voice_store import VoiceStore

logger = logging.getLogger("ray.serve")

POLL_S = 1.0  # how often the store is read for jobs another ingress replica accepted, cancelled or deleted
BUSY_PAUSE_S = 0.5  # after Serve refused an item for a full model, its items wait this long
SWEEP_PERIOD_S = 60.0  # how often expired jobs are removed


@serve.deployment(
    name="JobRunner",
    num_replicas=1,
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=5.0,
)
class JobRunner:
    def __init__(self, models: dict[str, DeploymentHandle], status_board: DeploymentHandle, config: AppConfig) -> None:
        self._config = config.jobs
        self._store = JobStore(application_root(config.jobs_dir, serve.get_replica_context().app_name))
        self._store.recover()
        self._voices = VoiceStore(config.voices_dir)
        self._adapters = AdapterStore(config.adapters_dir, declared=declared(config))
        self._models = models
        self._board = status_board
        share = config.jobs.replica_share
        self._per_replica = {
            m.name: max(1, int(share * (m.max_batch_size if m.engine == "batched" else 1))) for m in config.models
        }
        self._replicas = dict.fromkeys(self._models, 1)
        self._busy_until: dict[str, float] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._queue = JobQueue()
        self._specs: dict[str, dict[str, Any]] = {}
        self._finished: set[str] = set()  # read once and found finished: not read again
        self._cancelled: set[str] = set()
        self._tasks: dict[tuple[str, int], asyncio.Task] = {}
        self._swept = 0.0
        self._wake = asyncio.Event()
        self._usage = UsageLedger(config.usage_dir, f"jobs-{serve.get_replica_context().replica_id.unique_id}")
        metrics.usage().sink = self._usage.add
        loop = asyncio.get_running_loop()
        self._usage_flushed = loop.create_task(keep_flushed(self._usage))
        self._loop = loop.create_task(self._run())

    async def changed(self) -> None:
        """An ingress accepted, cancelled or deleted a job: look now rather than at the next poll."""
        self._wake.set()

    async def cancel(self, job_id: str) -> None:
        """Stop a cancelled or deleted job: its items in flight are cancelled (their model slots freed)."""
        self._cancelled.add(job_id)  # a job being resumed right now is not queued after all
        self._queue.drop(job_id)
        self._specs.pop(job_id, None)
        for (owner, _), task in list(self._tasks.items()):
            if owner == job_id:
                task.cancel()

    async def check_health(self) -> None:
        """Serve's probe: the loop that starts items still runs."""
        if self._loop.done():
            raise RuntimeError("the job runner's loop stopped")

    def __del__(self) -> None:
        """As Serve stops the replica: the usage counted since the last write, written."""
        with contextlib.suppress(OSError, AttributeError):
            self._usage.flush()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._refresh()
            except Exception:
                logger.exception("job runner: reading the job store failed; trying again in %s s", POLL_S)
            if self._store.runner_lease() is not None:  # one runner starts items, even during a rolling update
                self._start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def _refresh(self) -> None:
        """The queue made the store's: new and resumed jobs added, cancelled and deleted ones stopped, expired
        ones removed; the model replicas counted (the last count kept while the status board cannot answer)."""
        jobs = await asyncio.to_thread(self._store.all)
        present = {job.job_id for job in jobs}
        for job_id in [*self._queue.known()]:
            queued = self._queue.jobs[job_id]
            if job_id not in present or await asyncio.to_thread(self._store.is_cancelled, queued.job):
                await self.cancel(job_id)
        if time.monotonic() - self._swept > SWEEP_PERIOD_S:
            self._swept = time.monotonic()
            for job in await asyncio.to_thread(self._store.expired, self._config.retention_s):
                await self.cancel(job.job_id)
                await asyncio.to_thread(self._store.delete, job)
                logger.info("job %s: removed, %g s after it was submitted", job.job_id, self._config.retention_s)
        for job in jobs:
            if job.job_id not in self._queue.jobs and job.job_id not in self._finished:
                try:
                    await self._resume(job)
                except Exception:  # that job's files (deleted meanwhile, damaged): the others go on
                    logger.exception("job %s: cannot be resumed; tried again at the next poll", job.job_id)
        try:
            reports = await self._board.reports.remote()
        except Exception:  # noqa: BLE001 - the board restarting: keep the last counts
            logger.warning("job runner: the status board did not answer; keeping the replica counts")
            return
        for model in self._models:
            self._replicas[model] = max(1, sum(1 for info, _ in reports if info.name == model))

    async def _resume(self, job: Job) -> None:
        progress = await asyncio.to_thread(self._store.progress, job)
        if progress.status(job.items_total) not in ("queued", "running") or job.job_id in self._cancelled:
            self._finished.add(job.job_id)
            return
        if job.model not in self._models:  # the config no longer serves it: said, not left queued for ever
            message = f"model {job.model!r} is no longer served here"
            for index in progress.pending(job.items_total):
                await self._failed(job, index, "model_unavailable", message)
            self._finished.add(job.job_id)
            return
        spec = await asyncio.to_thread(self._store.spec, job)
        anchored = await asyncio.to_thread(self._store.prompt, job, "anchor") is not None
        self._specs[job.job_id] = spec
        self._queue.add(QueuedJob.of(job, progress, needs_anchor(job, spec), anchored, continues(spec)))
        if not progress.started:
            await asyncio.to_thread(self._store.started, job)

    def _start(self) -> None:
        while (picked := self._queue.next(self._room)) is not None:
            queued, index = picked
            task = asyncio.get_running_loop().create_task(self._render(queued, index))
            self._tasks[(queued.job.job_id, index)] = task

    def _room(self, model: str) -> bool:
        if self._busy_until.get(model, 0.0) > time.monotonic():
            return False
        return self._queue.in_flight(model) < self._replicas[model] * self._per_replica[model]

    async def _render(self, queued: QueuedJob, index: int) -> None:
        job = queued.job
        try:
            await self._render_item(queued, index)
        except asyncio.CancelledError:
            pass  # the job was cancelled or deleted: nothing of the item is kept
        except Exception as error:  # noqa: BLE001 - each kind has its rule (failures.py)
            outcome = verdict(error)
            if outcome.then is Then.WAIT:
                logger.warning("job %s: item %d waits: %r", job.job_id, index, error)
                self._again(queued, index)
            elif outcome.then is Then.RETRY:
                await self._tried(queued, index, error)
            elif outcome.then is Then.FAIL:
                await self._gave_up(queued, index, outcome.code, outcome.message)
            else:
                logger.info("job %s: deleted while item %d was rendered", job.job_id, index)
        finally:
            queued.in_flight.discard(index)
            self._tasks.pop((job.job_id, index), None)
            if queued.finished and self._queue.jobs.get(job.job_id) is queued:
                self._queue.drop(job.job_id)
                self._finished.add(job.job_id)
            self._wake.set()

    def _again(self, queued: QueuedJob, index: int) -> None:
        """The item back at the head of its job's queue; its model's items wait a moment first."""
        queued.pending.appendleft(index)
        self._busy_until[queued.job.model] = time.monotonic() + BUSY_PAUSE_S

    async def _tried(self, queued: QueuedJob, index: int, error: Exception) -> None:
        """A failed try: again, up to ``jobs.attempts``, then the item fails."""
        most = self._config.attempts
        tries = queued.tried(index)
        logger.warning("job %s: item %d failed (try %d of %d): %r", queued.job.job_id, index, tries, most, error)
        if tries < most:
            self._again(queued, index)
        else:
            await self._gave_up(queued, index, "model_failed", f"the model failed {tries} times: {error}")

    async def _gave_up(self, queued: QueuedJob, index: int, code: str, message: str) -> None:
        """The item failed for good, its failure written (``queue.py`` lets the items that waited for it go on)."""
        logger.warning("job %s: item %d failed: %s", queued.job.job_id, index, message)
        if await self._failed(queued.job, index, code, message):
            queued.gave_up(index)
        else:
            self._again(queued, index)  # not even its failure could be written: later

    async def _render_item(self, queued: QueuedJob, index: int) -> None:
        job, spec = queued.job, self._specs[queued.job.job_id]
        info = await self._info(job.model)
        anchor = await asyncio.to_thread(self._prompt, job, "anchor", 0) if queued.needs_anchor and index else None
        tail = await asyncio.to_thread(self._prompt, job, "tail", index - 1) if continues(spec) and index else None
        request = await asyncio.to_thread(
            request_for, job, spec, index, self._voices, self._adapters, anchor, tail, info.prompt_sample_rate
        )
        samples, ends = await self._generate(job.model, request)
        anchoring = queued.needs_anchor and index == 0
        rendered = await asyncio.to_thread(kept, job, spec, index, samples, ends, info, anchoring)
        for role, prompt in (("anchor", rendered.anchor), ("tail", rendered.tail)):  # before the chunk is done:
            if prompt is not None:  # a restart finds them with it
                await asyncio.to_thread(
                    self._store.save_prompt, job, role, prompt.samples, prompt.sample_rate, prompt.text, index
                )
        queued.anchored |= rendered.anchor is not None
        audio_format = CHUNK_FORMAT if job.kind == "document" else spec["output"]["format"]
        facts = {**rendered.facts, "rendered_at": time.time()}
        await asyncio.to_thread(self._store.item_done, job, index, rendered.audio, audio_format, facts)
        characters = sent_characters(spec, index, request)
        metrics.usage().record(job.owner, "job", characters, rendered.facts["seconds"])

    async def _generate(self, model: str, request: SynthesisRequest) -> tuple[np.ndarray, list[SegmentEnd]]:
        """The model's audio for the request, and where each sentence ends in it."""
        chunks = self._models[model].options(stream=True).sentences.remote(request)
        pieces: list[np.ndarray] = []
        ends: list[SegmentEnd] = []
        try:
            with model_errors():
                async for piece in chunks:
                    if isinstance(piece, SegmentEnd):
                        ends.append(piece)
                    else:
                        pieces.append(piece)
        finally:
            chunks.cancel()  # a cancelled job: the model stops too
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), ends

    async def _info(self, model: str) -> ModelInfo:
        if model not in self._infos:
            with model_errors():
                self._infos[model] = await self._models[model].info.remote()
        return self._infos[model]

    def _prompt(self, job: Job, role: PromptRole, chunk: int) -> PromptAudio | None:
        """The document's stored recording of that role, if it was cut from ``chunk`` (a tail from a chunk that
        failed for good is not there: the next chunk then starts afresh in the document's voice)."""
        stored = self._store.prompt(job, role)
        if stored is None or stored.chunk != chunk:
            return None
        return PromptAudio(samples=stored.samples, sample_rate=stored.sample_rate, text=stored.text)

    async def _failed(self, job: Job, index: int, code: str, message: str) -> bool:
        """The item's failure written, with the client's id for it; False when the store could not keep it."""
        items = self._specs.get(job.job_id, {}).get("items")
        item_id = items[index].get("id") if items else None
        try:
            await asyncio.to_thread(self._store.item_failed, job, index, code, message, item_id)
        except FileNotFoundError:
            return True  # deleted meanwhile: nothing to keep
        except OSError:
            logger.exception("job %s: the failure of item %d could not be written", job.job_id, index)
            return False
        return True
