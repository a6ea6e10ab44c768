"""Jobs: ``POST /api/jobs`` (a document or a list of items, rendered in the background), ``GET /api/jobs``,
``GET`` and ``DELETE /api/jobs/{job_id}``, and the results: ``/items/{index}``, ``/result`` (a ZIP64 streamed) and
``/audio`` (a document's one file). Each for the caller's tenant (another tenant's job is a 404, as an absent one).

Submissions are checked and resolved here (``job_requests.py``), kept by the job store and rendered by the
job runner deployment (``serve_app/jobs/runner.py``), which an ingress tells when a job came or went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.errors import BadRequest, Conflict, NotFound
from serve_app.ingress.dependencies import caller, request_trace
from serve_app.ingress.error_responses import documented_errors
from serve_app.ingress.job_requests import JobBuilder
from serve_app.ingress.job_schemas import JobRequest
from serve_app.ingress.schemas import MAX_NAME_CHARS
from serve_app.jobs import results
from serve_app.metrics import RequestTrace
from serve_app.store.job_store import Job, JobStore, Progress
from serve_app.store.tenants import Principal

logger = logging.getLogger("ray.serve")
T = TypeVar("T")

MAX_IDEMPOTENCY_KEY_CHARS = 255
RUNNER_ANSWER_S = 1.0
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobDesk:
    """What the job routes use, held by the ingress replica: the builder, the store and the runner's handle."""

    builder: JobBuilder
    store: JobStore
    runner: DeploymentHandle


def job_desk() -> JobDesk:
    return serve.get_replica_context().servable_object.jobs


router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=documented_errors(401, 404, 422, 429))
Desk = Annotated[JobDesk, Depends(job_desk)]
Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[str, PathParameter(max_length=MAX_NAME_CHARS)]
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}}


@router.post(
    "",
    status_code=202,
    summary="Submit a job: a document (one audio file) or a list of items (a file each), rendered in the background",
    responses=documented_errors(400, 403, 413, 503, 507),
    openapi_extra=_BODY,
)
async def submit(
    request: Request, desk: Desk, who: Caller, trace: Annotated[RequestTrace, Depends(request_trace)]
) -> JSONResponse:
    """202 with the job's status. An ``Idempotency-Key`` header makes a retried submission answer with the job
    the first one made (``Idempotent-Replayed: true``), whatever its body."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters", "idempotency-key")
    raw = await request.body()
    try:  # parsed off the event loop: a body may be tens of megabytes
        body = await asyncio.to_thread(JobRequest.model_validate_json, raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    job, new = await desk.builder.submit(body, who, trace, key)
    if new:
        await _tell_runner(desk.runner.changed)
    status = await _stored(_status, desk.store, job, False)
    return JSONResponse(status, status_code=202, headers={} if new else {"Idempotent-Replayed": "true"})


@router.get("", summary="The caller's jobs (an admin: every tenant's), oldest first")
async def list_jobs(desk: Desk, who: Caller) -> dict:
    def listed() -> list[dict]:
        found = []
        for job in desk.store.list(who):
            with contextlib.suppress(FileNotFoundError):  # deleted while listed
                found.append(_status(desk.store, job, False))
        return found

    return {"jobs": await _stored(listed)}


@router.get("/{job_id}", summary="A job's status: progress, audio seconds so far, an ETA, each failed item's error")
async def get_job(job_id: JobId, desk: Desk, who: Caller) -> dict:
    job = await _stored(desk.store.get, job_id, who)
    return await _stored(_status, desk.store, job, True)


@router.delete(
    "/{job_id}",
    summary="Cancel a queued or running job (what is done is kept); delete a finished or cancelled one",
    responses={200: {"description": "Cancelled: its status."}, 204: {"description": "Deleted."}},
)
async def delete_job(job_id: JobId, desk: Desk, who: Caller) -> Response:
    job = await _stored(desk.store.get, job_id, who)
    progress = await _stored(desk.store.progress, job)
    if progress.status(job.items_total) in FINISHED:
        await _stored(desk.store.delete, job)
        await _tell_runner(desk.runner.cancel, job.job_id)
        return Response(status_code=204)
    await _stored(desk.store.cancel, job)
    await _tell_runner(desk.runner.cancel, job.job_id)  # its items in flight stop now, freeing their model slots
    return JSONResponse(await _stored(_status, desk.store, job, True))


@router.get(
    "/{job_id}/items/{index}",
    summary="One item's audio (a document: one chunk's), as soon as it is done",
    responses=documented_errors(409),
)
async def item_audio(job_id: JobId, index: int, desk: Desk, who: Caller) -> Response:
    job = await _stored(desk.store.get, job_id, who)
    if not 0 <= index < job.items_total:
        raise NotFound(f"job {job_id!r} has items 0 to {job.items_total - 1}", "index")
    progress = await _stored(desk.store.progress, job)
    if index in progress.failed:
        raise Conflict(f"item {index} failed: {progress.failed[index]['message']}", "index")
    if index not in progress.done:
        raise Conflict(f"item {index} is not rendered yet", "index")
    path, fmt = desk.store.item_audio(job, progress.done[index]), AudioFormat(job.audio_format)
    if job.kind == "items":
        body = await _stored(path.read_bytes)
    else:  # a document's chunk is kept as FLAC at the model's rate
        body = await _stored(results.chunk_encoded, path, fmt, job.sample_rate)
    return Response(body, media_type=codecs.MEDIA_TYPES[fmt], headers={"X-Sample-Rate": str(job.sample_rate)})


@router.get(
    "/{job_id}/result",
    summary="A finished job's results: a ZIP64 of manifest.jsonl and every finished item's audio, streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, **documented_errors(409)},
)
async def result(job_id: JobId, desk: Desk, who: Caller) -> StreamingResponse:
    job, spec, progress = await _finished(job_id, desk, who, FINISHED)
    disposition = f'attachment; filename="job-{job.job_id}.zip"'
    body = results.zipped(desk.store, job, spec, progress)  # a sync iterator: Starlette reads it in a thread
    return StreamingResponse(body, media_type="application/zip", headers={"Content-Disposition": disposition})


@router.get(
    "/{job_id}/audio",
    summary="A finished document's audio, one file: its chunks joined",
    response_class=StreamingResponse,
    responses=documented_errors(409),
)
async def document_audio(job_id: JobId, desk: Desk, who: Caller) -> StreamingResponse:
    job, spec, progress = await _finished(job_id, desk, who, ("succeeded",))
    if job.kind != "document":
        raise Conflict("this job renders items, each its own file: fetch /result or /items/{index}", "job_id")
    body = results.document_audio(desk.store, job, spec, progress)
    return StreamingResponse(body, media_type=codecs.MEDIA_TYPES[AudioFormat(job.audio_format)])


async def _stored(read: Callable[..., T], *args: Any) -> T:
    """A job store call, off the event loop; a job deleted meanwhile (by its owner, or expired) is a 404."""
    try:
        return await asyncio.to_thread(read, *args)
    except FileNotFoundError:
        raise NotFound("the job was deleted", "job_id") from None


async def _tell_runner(method: Any, *args: Any) -> None:
    """The job runner told at once that a job came or went, if it answers within a second: it also reads the
    store every second, so a runner restarting costs the client nothing (the job is already stored)."""
    try:
        await asyncio.wait_for(method.remote(*args), RUNNER_ANSWER_S)
    except Exception:  # noqa: BLE001 - whatever Ray raises for a replica that is not there
        logger.warning("the job runner did not answer %s; it finds the change at its next poll", method)


async def _finished(
    job_id: str, desk: JobDesk, who: Principal, statuses: tuple[str, ...]
) -> tuple[Job, dict[str, Any], Progress]:
    job = await _stored(desk.store.get, job_id, who)
    progress = await _stored(desk.store.progress, job)
    status = progress.status(job.items_total)
    if status not in statuses:
        raise Conflict(f"job {job_id!r} is {status}; this result is ready when it is {' or '.join(statuses)}", "job_id")
    return job, await _stored(desk.store.spec, job), progress


def _status(store: JobStore, job: Job, with_errors: bool) -> dict[str, Any]:
    """A job as its routes describe it (from its ``job.json`` and its items' facts, never its whole spec)."""
    progress = store.progress(job)
    audio_seconds = round(sum(facts["seconds"] for facts in progress.done.values()), 3)
    described: dict[str, Any] = {
        "job_id": job.job_id,
        "kind": job.kind,
        "model": job.model,
        "format": job.audio_format,
        "sample_rate": job.sample_rate,
        "status": progress.status(job.items_total),
        "items_total": job.items_total,
        "items_done": len(progress.done),
        "items_failed": len(progress.failed),
        "audio_seconds": audio_seconds,
        "eta_s": results.eta_s(job, progress),
        "created": job.created,
        "characters": job.chars,
        "usage": {"characters": job.chars, "audio_seconds": audio_seconds, "items": len(progress.done)},
    }
    suspect = {
        index: facts["badcase_sentences"] for index, facts in progress.done.items() if "badcase_sentences" in facts
    }
    described["items_badcase"] = len(suspect)
    if with_errors:
        described["errors"] = [
            {"index": index, "id": error.get("id"), "code": error["code"], "message": error["message"]}
            for index, error in sorted(progress.failed.items())
        ]
        described["warnings"] = [
            {
                "index": index,
                "id": progress.done[index].get("id"),
                "code": "badcase",
                "message": f"sentences {sentences} (0-based) still ran implausibly long for their text after "
                "retry_badcase's tries (a loop or babble is likely): listen, or submit the item again with "
                "another seed",
            }
            for index, sentences in sorted(suspect.items())
        ]
    return described
