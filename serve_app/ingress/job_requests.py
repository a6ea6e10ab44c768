"""Job submission: a ``POST /api/jobs`` body as the job the runner renders, checked and resolved once, when it is
submitted (the runner never sees a client's names: voices and adapters by id, the answer's rate resolved).

The same rules as a request's (``synthesis_requests.py``): the model resolved, each item's text within
``limits.max_text_chars``, its voice and adapter ones the caller may use (looked up once per distinct name),
fields the model cannot take refused; and a job's own: a document's size, the number of items, the tenant's
quotas on unfinished jobs, their characters and their stored audio, decided under the store's lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.config import AppConfig
from serve_app.errors import InvalidField, PayloadTooLarge, QuotaExceeded
from serve_app.ingress.job_schemas import ItemSettings, JobRequest
from serve_app.ingress.synthesis_requests import RequestBuilder
from serve_app.jobs.documents import chapters
from serve_app.metrics import RequestTrace
from serve_app.model.capabilities import REFERENCE_AUDIO
from serve_app.model.types import Span
from serve_app.store.job_store import Job, JobStore
from serve_app.store.tenants import Principal
from serve_app.text.lexicons import Rewriter

SETTINGS_EXCLUDED = {"voice_id", "adapter", "lexicons"}  # resolved before the spec is stored (lexicons: applied)


class JobBuilder:
    def __init__(self, requests: RequestBuilder, store: JobStore, config: AppConfig) -> None:
        self._requests = requests
        self._store = store
        self._config = config

    async def submit(
        self, body: JobRequest, caller: Principal, trace: RequestTrace, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """The job accepted (or the one this idempotency key already made), and whether it is new."""
        client = self._requests.client
        model = client.resolve(body.model)
        output = await self._requests.output(model, body.format, body.sample_rate, trace, body.speed)
        spec: dict[str, Any] = {
            "output": {
                "format": output.format.value,
                "sample_rate": output.sample_rate,
                "speed": output.speed,
                "timestamps": body.timestamps,
            }
        }
        resolved: dict[tuple[str | None, str | None], dict[str, Any]] = {}
        if body.document is not None:
            chars = len(body.document)
            spec["document"] = await self._document(body.document, body.defaults, model, caller, resolved)
            total = len(spec["document"]["chunks"])
        else:
            assert body.items is not None
            chars = sum(len(item.text) for item in body.items)
            spec["items"] = await self._items(body, model, caller, resolved)
            total = len(spec["items"])
        quota = self._config.access.quotas

        def check_quota(ours: list[Job]) -> None:
            if caller.admin:
                return
            progress = {job.job_id: self._store.progress(job) for job in ours}  # read once per job
            unfinished = [job for job in ours if progress[job.job_id].status(job.items_total) in _UNFINISHED]
            if quota.jobs is not None and len(unfinished) >= quota.jobs:
                raise QuotaExceeded(f"your tenant has {len(unfinished)} unfinished jobs, its quota", "quotas.jobs")
            queued = sum(job.chars for job in unfinished) + chars
            if quota.job_chars is not None and queued > quota.job_chars:
                raise QuotaExceeded(
                    f"your tenant's unfinished jobs would hold {queued} characters; its quota is {quota.job_chars}",
                    "quotas.job_chars",
                )
            stored = sum(facts.get("bytes", 0) for done in progress.values() for facts in done.done.values())
            if quota.job_bytes is not None and stored >= quota.job_bytes:
                raise QuotaExceeded(
                    f"your tenant's jobs keep {stored} bytes of audio, its quota: delete finished jobs",
                    "quotas.job_bytes",
                )

        kind = "document" if body.document is not None else "items"
        output_of_files = (output.format.value, output.sample_rate)
        return await asyncio.to_thread(
            self._store.create, caller, kind, spec, total, idempotency_key, model, chars, check_quota, output_of_files
        )

    async def _document(
        self, document: str, defaults: ItemSettings, model: str, caller: Principal, resolved: dict
    ) -> dict[str, Any]:
        jobs = self._config.jobs
        if len(document) > jobs.max_document_chars:
            raise PayloadTooLarge(
                f"document has {len(document)} characters; the limit is {jobs.max_document_chars}", "document"
            )
        found = await asyncio.to_thread(chapters, document, jobs.chunk_chars, jobs.pauses)
        if not found:
            raise InvalidField("document has nothing to speak", "document")
        settings = await self._settings(defaults.model_dump(), model, caller, "defaults", resolved)
        rewrite = await self._requests.rewriter(defaults.lexicon_names(), caller)  # applied now, kept as said
        said = rewrite if rewrite else str
        chunks = [
            {"chapter": number, "spans": [{"text": said(s.text), "pause_after": s.pause_after} for s in chunk]}
            for number, chapter in enumerate(found)
            for chunk in chapter.chunks
        ]
        titles = [chapter.title for chapter in found]
        info = await self._requests.client.model_info(model)
        continuation = jobs.continuation and REFERENCE_AUDIO in info.capabilities and not settings.get("instructions")
        return {"settings": settings, "chunks": chunks, "chapters": titles, "continuation": continuation}

    async def _items(self, body: JobRequest, model: str, caller: Principal, resolved: dict) -> list[dict[str, Any]]:
        assert body.items is not None
        if len(body.items) > self._config.jobs.max_items:
            raise PayloadTooLarge(
                f"items has {len(body.items)} items; the limit is {self._config.jobs.max_items}", "items"
            )
        items = []
        rewrites: dict[tuple[str, ...], Rewriter] = {}
        for index, item in enumerate(body.items):
            self._requests.check_text_length(item.text, f"items[{index}].text")
            where = f"items[{index}]" if "voice_id" in item.model_fields_set else "defaults"  # where a name came from
            asked = item.settings(body.defaults)
            settings = await self._settings(asked, model, caller, where, resolved)
            stored = {"id": item.id, "text": item.text, "settings": settings}
            names = tuple(asked.get("lexicons") or ())
            if names not in rewrites:  # each distinct list looked up once per job, not once per item
                rewrites[names] = await self._requests.rewriter(names, caller)
            said = await self._requests.marked(item.text, f"items[{index}].text", caller, rewrite=rewrites[names])
            # SSML, or text its lexicons rewrote: the spans kept as said, voices by id (resolved now, as the
            # item's own voice); the text as sent stays for the manifest and usage
            spans = said.spans or ((Span(said.text),) if said.text != item.text else ())
            if spans:
                stored["spans"] = [
                    {
                        "text": span.text,
                        "voice_id": span.voice.voice_id if span.voice else None,
                        "speed": span.speed,
                        "pause_after": span.pause_after,
                    }
                    for span in spans
                ]
            items.append(stored)
        return items

    async def _settings(
        self, settings: dict[str, Any], model: str, caller: Principal, where: str, resolved: dict
    ) -> dict[str, Any]:
        """An item's settings as stored: voxcpm's knobs and instructions, its voice and adapter by id (each
        distinct pair looked up once per job)."""
        key = (settings.get("voice_id"), settings.get("adapter"))
        if key not in resolved:
            voice = await self._requests.voice(key[0], f"{where}.voice_id", caller) if key[0] else None
            adapter = await self._requests.adapter(key[1], voice, model, caller)
            resolved[key] = {
                "voice_id": voice.voice_id if voice else None,
                "adapter_id": adapter.adapter_id if adapter else None,
            }
        await self._requests.client.require(model, {"instructions": settings.get("instructions")})
        knobs = {name: value for name, value in settings.items() if name not in SETTINGS_EXCLUDED}
        return {**knobs, **resolved[key]}


_UNFINISHED = ("queued", "running")
