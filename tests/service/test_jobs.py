"""Jobs through the real stack: submitted over HTTP, rendered by the job runner deployment on the real (synthetic)
model at background priority, results downloaded as files, a streamed ZIP64 and a document's one file; tenants'
jobs their own, quotas and limits, idempotent submissions, cancellation, and a runner killed mid-job resuming.
"""

from __future__ import annotations

import io
import json
import time
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import requests

from serve_app.store.job_store import application_root
from tests.conftest import (
    TINY_V15_STEP_FRAMES,
    Service,
    error_of,
    extra_app,
    run,
    scrape,
    stores,
    total,
    wait_until,
)

ALICE, BOB, METER = "alice-jobs-key", "bob-jobs-key", "meter-jobs-key"  # meter: the usage test's alone
SETTINGS = {"max_len": 6, "min_len": 6, "seed": 7, "inference_timesteps": 2}  # every sentence 6 steps long


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(url: str, body: dict, key: str | None = None, **headers: str) -> requests.Response:
    return requests.post(f"{url}/api/jobs", json=body, headers={**(bearer(key) if key else {}), **headers})


def pcm16(wav_file: bytes) -> np.ndarray:
    return np.frombuffer(wav_file[44:], dtype="<i2")


def finished(url: str, job_id: str, key: str | None = None, timeout_s: float = 120) -> dict:
    headers = bearer(key) if key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/api/jobs/{job_id}", headers=headers).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {status}")


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-jobs")


@pytest.fixture(scope="module")
def tenants_url(service: Service, checkpoints: Path, jobs_dir: Path) -> Iterator[str]:
    """A deployment of its own: two tenants, a quota of two unfinished jobs each, at most eight items a job, a
    document's every sentence a chunk of its own (so that each has the step budget: synthetic weights never stop)."""
    args = {
        "access": {"api_keys": [f"alice={ALICE}", f"bob={BOB}", f"meter={METER}"], "quotas": {"jobs": 2}},
        "jobs": {"max_items": 8, "chunk_chars": 1},
        "jobs_dir": str(jobs_dir),
    }
    with extra_app(service, checkpoints, "jobs", args) as url:
        yield url


def test_items_are_rendered_as_direct_requests_and_zipped(url: str) -> None:
    items = [{"id": "../../etc/passwd", "text": "第一句。"}, {"text": "第二句话。"}, {"id": "c", "text": "三。"}]
    response = submit(url, {"items": items, "defaults": SETTINGS, "timestamps": "word"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in ("queued", "running") and job["items_total"] == 3 and job["kind"] == "items"
    status = finished(url, job["job_id"])
    assert status["status"] == "succeeded" and status["items_done"] == 3 and status["errors"] == []
    assert status["audio_seconds"] == pytest.approx(3 * 6 * TINY_V15_STEP_FRAMES / 44100, abs=0.01)
    for index, item in enumerate(items):  # each item is what /api/tts gives for it, with the same seed
        audio = requests.get(f"{url}/api/jobs/{job['job_id']}/items/{index}")
        direct = requests.post(f"{url}/api/tts", data={"text": item["text"], **SETTINGS})
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
        # the same but for float32 rounding: the job's items ran batched together, the direct one alone
        assert len(audio.content) == len(direct.content) and audio.content[:44] == direct.content[:44]
        difference = pcm16(audio.content).astype(np.int32) - pcm16(direct.content)
        assert np.abs(difference).max() <= 2
    zipped = requests.get(f"{url}/api/jobs/{job['job_id']}/result")
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert archive.namelist() == ["manifest.jsonl", "0.wav", "1.wav", "2.wav"]  # never the client's id
    manifest = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    assert [(m["index"], m["id"], m["file"]) for m in manifest] == [
        (0, items[0]["id"], "0.wav"),
        (1, None, "1.wav"),
        (2, "c", "2.wav"),
    ]
    assert manifest[1]["words"] and manifest[1]["segments"][0]["text"] == "第二句话。"
    with wave.open(io.BytesIO(archive.read("2.wav"))) as audio:
        assert audio.getnframes() / audio.getframerate() == pytest.approx(manifest[2]["seconds"], abs=1e-3)


def test_an_item_still_bad_after_its_retries_is_reported(url: str) -> None:
    """Synthetic weights never stop: given room past voxcpm's bad-case ratio, the item runs into it on every try
    (retried as retry_badcase does), is kept, and is named in the status and the manifest."""
    items = [{"id": "loops", "text": "三。", "max_len": 40, "retry_badcase_max_times": 2}, {"text": "二。"}]
    job = submit(url, {"items": items, "defaults": SETTINGS}).json()
    status = finished(url, job["job_id"])
    assert status["status"] == "succeeded" and status["items_badcase"] == 1
    assert [(w["index"], w["id"], w["code"]) for w in status["warnings"]] == [(0, "loops", "badcase")]
    archive = zipfile.ZipFile(io.BytesIO(requests.get(f"{url}/api/jobs/{job['job_id']}/result").content))
    manifest = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    assert manifest[0]["badcase_sentences"] == [0] and "badcase_sentences" not in manifest[1]


def test_a_document_is_one_file_of_its_chunks(tenants_url: str) -> None:
    url, key = tenants_url, bearer(BOB)
    document = "# 第一章\n\n第一段的第一句。第一段的第二句。\n\n第二段。\n\n# 第二章\n\n最后一段。"
    body = {"document": document, "defaults": SETTINGS, "timestamps": "segment"}
    job = submit(url, body, BOB).json()
    assert job["items_total"] == 6  # a chunk a sentence, in this deployment
    assert finished(url, job["job_id"], BOB)["status"] == "succeeded"
    audio = requests.get(f"{url}/api/jobs/{job['job_id']}/audio", headers=key)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    samples, rate = pcm16(audio.content) / 32768, 44100  # streamed: a WAV header of unknown length
    archive = zipfile.ZipFile(io.BytesIO(requests.get(f"{url}/api/jobs/{job['job_id']}/result", headers=key).content))
    assert archive.namelist() == ["manifest.jsonl", "document.wav"]
    assert archive.read("document.wav") == audio.content
    manifest = [json.loads(line) for line in archive.read("manifest.jsonl").splitlines()]
    assert {m["chapter"] for m in manifest} == {0, 1} and manifest[0]["start_s"] == 0
    assert len(samples) / rate == pytest.approx(manifest[-1]["end_s"], abs=2e-3)
    spoken = [s["text"] for m in manifest for s in m["segments"]]
    assert spoken == ["第一章", "第一段的第一句。", "第一段的第二句。", "第二段。", "第二章", "最后一段。"]
    end_of_chapter = round(manifest[3]["end_s"] * rate)  # its last chunk ends in the chapter's pause (1.5 s)
    assert not np.abs(samples[end_of_chapter - int(1.5 * rate) + 480 : end_of_chapter - 480]).any()
    assert np.abs(samples[end_of_chapter + 480 : end_of_chapter + 4800]).any()  # and the next chapter speaks


def test_a_document_without_a_voice_speaks_after_its_first_sentence(tenants_url: str, jobs_dir: Path) -> None:
    job = submit(tenants_url, {"document": "第一句。第二句。第三句。", "defaults": SETTINGS}, BOB).json()
    assert finished(tenants_url, job["job_id"], BOB)["status"] == "succeeded"
    anchor = jobs_dir / "jobs" / job["job_id"] / "anchor.json"  # kept with the job (app "jobs")
    assert json.loads(anchor.read_text())["text"] == "第一句。"


def test_a_voxcpm2_documents_chunks_continue_each_other_in_order(service: Service, checkpoints: Path) -> None:
    """``jobs.continuation``: each chunk after the first continues the one before (its last sentence beside the
    document's voice as an isolated reference: voxcpm's ref_continuation), so they render one after another."""
    jobs = {"chunk_chars": 1, "continuation": True}
    source = str(checkpoints / "tiny-voxcpm2")
    with extra_app(service, checkpoints, "continued", {"jobs": jobs}, source=source) as app_url:
        response = submit(app_url, {"document": "第一句。第二句。第三句。", "defaults": SETTINGS})
        assert response.status_code == 202, response.text
        job = response.json()
        assert finished(app_url, job["job_id"])["status"] == "succeeded"
        stored = application_root(stores(checkpoints)["jobs_dir"], "continued") / job["job_id"]
        assert json.loads((stored / "spec.json").read_text())["document"]["continuation"] is True
        tail = json.loads((stored / "tail.json").read_text())
        assert tail["chunk"] == 2 and tail["text"] == "第三句。"  # the last chunk's end, kept as each one's was
        rendered = [json.loads((stored / "items" / f"{i}.json").read_text())["rendered_at"] for i in range(3)]
        assert rendered == sorted(rendered)
        audio = requests.get(f"{app_url}/api/jobs/{job['job_id']}/audio")
        assert audio.status_code == 200 and len(audio.content) > 44


def test_errors_name_the_field(url: str, reference_wav: Path) -> None:
    both = submit(url, {"document": "一。", "items": [{"text": "二。"}]})
    assert both.status_code == 422
    blank = submit(url, {"items": [{"text": "  "}]})
    assert blank.status_code == 422 and error_of(blank)["field"] == "items"
    unknown = submit(url, {"items": [{"text": "一。"}, {"text": "二。", "voice_id": "nobody"}]})
    assert unknown.status_code == 404 and error_of(unknown)["field"] == "items[1].voice_id"
    long = submit(url, {"items": [{"text": "长" * 5001}]})
    assert long.status_code == 413 and error_of(long)["field"] == "items[0].text"
    bad_json = requests.post(f"{url}/api/jobs", data=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and error_of(bad_json)["field"] == "body"
    assert requests.get(f"{url}/api/jobs/{'0' * 32}").status_code == 404
    rate = submit(url, {"items": [{"text": "一。"}], "format": "mp3", "sample_rate": 12345})
    assert rate.status_code in (400, 422) and error_of(rate)["field"] == "sample_rate"


def test_tenants_quotas_limits_and_idempotency(tenants_url: str) -> None:
    slow = {"items": [{"text": "一。"}], "defaults": {"max_len": 4000, "min_len": 4000}}
    first = submit(tenants_url, slow, ALICE, **{"Idempotency-Key": "book-1"})
    again = submit(tenants_url, {"items": [{"text": "不同"}]}, ALICE, **{"Idempotency-Key": "book-1"})
    assert first.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    job_id = first.json()["job_id"]
    assert again.json()["job_id"] == job_id
    assert requests.get(f"{tenants_url}/api/jobs/{job_id}", headers=bearer(BOB)).status_code == 404
    assert requests.delete(f"{tenants_url}/api/jobs/{job_id}", headers=bearer(BOB)).status_code == 404
    assert job_id not in {
        j["job_id"] for j in requests.get(f"{tenants_url}/api/jobs", headers=bearer(BOB)).json()["jobs"]
    }
    second = submit(tenants_url, slow, ALICE)
    over = submit(tenants_url, slow, ALICE)
    assert second.status_code == 202 and over.status_code == 403 and error_of(over)["field"] == "quotas.jobs"
    too_many = submit(tenants_url, {"items": [{"text": "一。"}] * 9}, BOB)
    assert too_many.status_code == 413 and error_of(too_many)["field"] == "items"
    early = requests.get(f"{tenants_url}/api/jobs/{job_id}/items/0", headers=bearer(ALICE))
    assert early.status_code == 409 and error_of(early)["field"] == "index"
    assert requests.get(f"{tenants_url}/api/jobs/{job_id}/result", headers=bearer(ALICE)).status_code == 409
    for job in (job_id, second.json()["job_id"]):  # cancelled: its model slot is free at once, then deleted
        cancelled = requests.delete(f"{tenants_url}/api/jobs/{job}", headers=bearer(ALICE))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert requests.delete(f"{tenants_url}/api/jobs/{job}", headers=bearer(ALICE)).status_code == 204
        assert requests.get(f"{tenants_url}/api/jobs/{job}", headers=bearer(ALICE)).status_code == 404
    assert submit(tenants_url, {"items": [{"text": "一。"}], "defaults": SETTINGS}, ALICE).status_code == 202


def kill_replica(deployment: str) -> None:
    """Kill the tenants app's replica of ``deployment``, as a crash would: Serve starts another."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    replica = next(name for name in names if name.startswith(f"SERVE_REPLICA::jobs#{deployment}#"))
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)


@pytest.mark.parametrize("deployment", ["JobRunner", "VoxCPMModel"])
def test_a_killed_replica_loses_no_item(tenants_url: str, deployment: str) -> None:
    """The runner resumes from the store; items a dead model replica held are tried again."""
    items = [{"text": f"第{n}句。"} for n in range(8)]  # twice what the runner keeps in flight: 4
    job = submit(tenants_url, {"items": items, "defaults": {**SETTINGS, "max_len": 60, "min_len": 60}}, BOB).json()
    status = lambda: requests.get(f"{tenants_url}/api/jobs/{job['job_id']}", headers=bearer(BOB)).json()  # noqa: E731
    assert wait_until(lambda: status()["items_done"] > 0, 60)  # the next items are in flight now
    kill_replica(deployment)
    done = finished(tenants_url, job["job_id"], BOB, timeout_s=180)
    assert done["status"] == "succeeded" and done["items_done"] == 8
    sizes = set()
    for index in range(8):  # each item's file whole (an item in flight when the runner died was rendered again)
        audio = requests.get(f"{tenants_url}/api/jobs/{job['job_id']}/items/{index}", headers=bearer(BOB))
        assert audio.status_code == 200 and (len(audio.content) - 44) % (TINY_V15_STEP_FRAMES * 2) == 0
        sizes.add(len(audio.content))
    assert len(sizes) == 1 and sizes.pop() > 44  # texts of one length: as many steps each


def test_the_command_submits_waits_and_fetches(url: str, tmp_path: Path) -> None:
    book = tmp_path / "book.md"
    book.write_text("# 一\n\n第一句。\n", encoding="utf-8")
    submitted = run(url, "jobs", "submit", str(book), "--seed", "3", "--max-len", "6", "--timestamps", "word")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = run(url, "jobs", "wait", job_id)
    assert waited.returncode == 0 and waited.stdout.startswith("succeeded"), waited.stderr
    fetched = run(url, "jobs", "fetch", job_id, "-o", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["document.wav", "manifest.jsonl"]
    assert job_id in run(url, "jobs", "list").stdout
    assert json.loads(run(url, "jobs", "status", job_id).stdout)["status"] == "succeeded"
    items = tmp_path / "items.jsonl"
    items.write_text('"第一句。"\n{"id": "b", "text": "第二句。"}\n', encoding="utf-8")
    listed = run(url, "jobs", "submit", "--items", str(items), "--max-len", "4000")
    assert listed.returncode == 0, listed.stderr
    assert run(url, "jobs", "cancel", listed.stdout.strip()).returncode == 0
    assert json.loads(run(url, "jobs", "status", listed.stdout.strip()).stdout)["status"] == "cancelled"
    refused = run(url, "jobs", "submit", "--items", str(tmp_path / "missing.jsonl"))
    assert refused.returncode == 2


def usage_of(url: str, key: str, **query: str | int) -> dict:
    """Today's usage of the key's tenant."""
    response = requests.get(f"{url}/api/usage", params=query, headers=bearer(key))
    assert response.status_code == 200, response.text
    days = response.json()["usage"]
    return days[0] if days else {"requests": 0, "characters": 0, "audio_seconds": 0.0, "job_items": 0}


def test_usage_is_counted_per_tenant_for_requests_and_jobs(tenants_url: str) -> None:
    spoken = requests.post(f"{tenants_url}/api/tts", data={"text": "四个字。", **SETTINGS}, headers=bearer(METER))
    seconds = (len(spoken.content) - 44) / 2 / 44100
    body = {"model": "tts-1", "input": "你好。", "voice": "alloy", "stream_format": "sse", "max_len": 6}
    events = requests.post(f"{tenants_url}/v1/audio/speech", json=body, headers=bearer(METER)).text
    done = json.loads(events.strip().split("data: ")[-1])
    assert done["type"] == "speech.audio.done" and done["usage"]["characters"] == 3
    assert done["usage"]["audio_seconds"] == pytest.approx(6 * TINY_V15_STEP_FRAMES / 44100, abs=1e-3)
    job = submit(tenants_url, {"items": [{"text": "一二。"}, {"text": "三。"}], "defaults": SETTINGS}, METER).json()
    status = finished(tenants_url, job["job_id"], METER)
    assert status["usage"] == {"characters": 5, "audio_seconds": status["audio_seconds"], "items": 2}
    expected = {"requests": 2, "characters": 4 + 3 + 5, "job_items": 2}
    audio_seconds = seconds + done["usage"]["audio_seconds"] + status["audio_seconds"]

    def counted() -> bool:  # each replica (the ingress, the job runner) writes what it counted within seconds
        today = usage_of(tenants_url, METER)
        same = all(today[name] == value for name, value in expected.items())
        return same and today["audio_seconds"] == pytest.approx(audio_seconds, abs=2e-3)

    assert wait_until(counted, 30), usage_of(tenants_url, METER)

    def exported() -> bool:  # and as Prometheus metrics, labelled by tenant and kind
        samples = scrape()
        requests_done = total(samples, "ray_voxcpm_tenant_requests_total", tenant="meter", kind="request")
        return requests_done == 2 and total(samples, "ray_voxcpm_tenant_job_items_total", tenant="meter") == 2

    assert wait_until(exported, 30)
    refused = requests.get(f"{tenants_url}/api/usage", params={"tenant": "alice"}, headers=bearer(METER))
    assert refused.status_code == 403 and error_of(refused)["field"] == "tenant"
    mine = requests.get(f"{tenants_url}/api/usage", headers=bearer(METER)).json()["usage"]
    assert {day["tenant"] for day in mine} == {"meter"}
