"""Observability through the real stack: our metrics and Serve's on Ray's Prometheus endpoint, request ids in logs."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests.conftest import REPORT_WAIT_S, Service, extra_app, scrape, total, wait_until

MODEL = "metrics-probe"  # this module's own model name: no other test adds to its series


@pytest.fixture(scope="module")
def probe_url(service: Service, checkpoints: Path) -> Iterator[str]:
    with extra_app(service, checkpoints, "metrics", name=MODEL) as url:
        yield url


def audio_seconds(response: requests.Response) -> float:
    assert response.status_code == 200, response.text[:200]
    info = sf.info(io.BytesIO(response.content))
    return info.frames / info.samplerate


def test_our_metrics_and_serves_after_real_requests(probe_url: str, reference_wav: Path) -> None:
    three_chunks_or_more = {"text": "你好。", "min_len": 3, "max_len": 10}
    streamed = audio_seconds(requests.post(f"{probe_url}/api/tts/stream", data=three_chunks_or_more))
    with reference_wav.open("rb") as audio:
        cloned = {"prompt_audio": ("ref.wav", audio.read(), "audio/wav")}
    form = {"text": "再见。", "prompt_text": "参考", "max_len": 6, "retry_badcase": "false"}
    whole = audio_seconds(requests.post(f"{probe_url}/api/tts", data=form, files=cloned))
    again = audio_seconds(requests.post(f"{probe_url}/api/tts", data=form, files=cloned))
    assert requests.post(f"{probe_url}/api/tts/stream", data={"text": "x", "cfg_value": 9}).status_code == 422

    stream = {"application": "metrics", "route": "/api/tts/stream"}
    once = {"application": "metrics", "route": "/api/tts"}
    deadline = time.monotonic() + 60
    while True:  # Ray reports each replica's metrics every second (conftest); wait until all have arrived
        samples = scrape()
        arrived = (
            total(samples, "ray_voxcpm_request_duration_seconds_count", **once) == 2
            and total(samples, "ray_voxcpm_queue_wait_seconds_count", application="metrics") == 3
            and total(samples, "ray_voxcpm_errors_total", application="metrics") == 1
            and total(samples, "ray_voxcpm_prompt_cache_lookups_total", application="metrics") == 2
            and total(samples, "ray_voxcpm_stream_chunk_gap_seconds_count", **stream) >= 2
            and total(samples, "ray_voxcpm_generation_chunk_gap_seconds_count", **stream) >= 2
        )
        if arrived or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert arrived, {name: v for name, v in samples.items() if "voxcpm" in name}

    assert total(samples, "ray_voxcpm_time_to_first_byte_seconds_count", model=MODEL, **stream) == 1
    assert total(samples, "ray_voxcpm_request_duration_seconds_count", model=MODEL, **stream) == 1
    first_byte = total(samples, "ray_voxcpm_time_to_first_byte_seconds_sum", **stream)
    assert 0 < first_byte < total(samples, "ray_voxcpm_request_duration_seconds_sum", **stream)
    assert total(samples, "ray_voxcpm_audio_seconds_total", **stream) == pytest.approx(streamed, abs=1e-3)
    assert total(samples, "ray_voxcpm_audio_seconds_total", **once) == pytest.approx(whole + again, abs=1e-3)
    assert total(samples, "ray_voxcpm_real_time_factor_count", application="metrics") == 3
    assert total(samples, "ray_voxcpm_errors_total", code="invalid_field", **stream) == 1
    assert total(samples, "ray_voxcpm_active_streams", model=MODEL, **stream) == 0
    assert total(samples, "ray_voxcpm_generations_in_flight", model=MODEL, application="metrics") == 0
    assert total(samples, "ray_voxcpm_queue_wait_seconds_count", model=MODEL, **once) == 2
    # the same chunks timed where they leave the model and where they reach the ingress (only streams have them)
    gaps = total(samples, "ray_voxcpm_generation_chunk_gap_seconds_count", model=MODEL, **stream)
    assert total(samples, "ray_voxcpm_stream_chunk_gap_seconds_count", model=MODEL, **stream) == gaps
    assert total(samples, "ray_voxcpm_generation_chunk_gap_seconds_count", **once) == 0
    cache = {"model": MODEL, "application": "metrics"}
    assert total(samples, "ray_voxcpm_prompt_cache_lookups_total", result="miss", **cache) == 1
    assert total(samples, "ray_voxcpm_prompt_cache_lookups_total", result="hit", **cache) == 1
    # Serve's own, on the same endpoint
    assert total(samples, "ray_serve_num_http_requests_total", application="metrics") >= 4
    assert total(samples, "ray_serve_deployment_processing_latency_ms_count", application="metrics") >= 4


def test_request_id_follows_the_request_into_both_deployments_logs(url: str) -> None:
    """Serve's JSON log lines (configs/local.yaml) carry the client's X-Request-Id in the ingress and the
    model replica, and the response echoes it."""
    import ray

    request_id = f"trace-{uuid.uuid4().hex}"
    response = requests.post(
        f"{url}/api/tts/stream", data={"text": "追踪这个请求。", "max_len": 4}, headers={"X-Request-Id": request_id}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 20
    while True:
        lines = {
            path.name: [json.loads(line) for line in path.read_text().splitlines() if request_id in line]
            for path in logs.glob("replica_voxcpm_*.log")
        }
        by_deployment = {name.split("_")[2]: found for name, found in lines.items() if found}
        if {"TTSIngress", "VoxCPMModel"} <= set(by_deployment) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"TTSIngress", "VoxCPMModel"} <= set(by_deployment), lines.keys()
    for found in by_deployment.values():
        assert all(line["request_id"] == request_id for line in found)
    model_lines = [line["message"] for line in by_deployment["VoxCPMModel"]]
    assert any("7 characters ('追踪这个请求。'...)" in message for message in model_lines), model_lines


def test_gpu_status_reports_every_replica(service: Service, checkpoints: Path) -> None:
    """Two model replicas: both are in /api/gpu/status (each reports to the status board)."""
    deployments = {"VoxCPMModel": {"num_replicas": 2}}
    with extra_app(service, checkpoints, "two-replicas", deployments=deployments) as url:

        def both_reported() -> bool:
            nonlocal body
            body = requests.get(f"{url}/api/gpu/status", timeout=10).json()
            return len({replica["replica_id"] for replica in body["replicas"]}) == 2

        body: dict = {}
        assert wait_until(both_reported, REPORT_WAIT_S), body
    assert body["nodes"] == []  # no node of this cluster declares GPUs
    assert body["gpus"] == [] and body["cuda_available"] is False
