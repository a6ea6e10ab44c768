"""Faults on the real stack: overload, a replica killed mid-stream, slow readers, a rollout mid-stream.

Each test has an app of its own (tests.conftest.extra_app), so what it breaks breaks nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest
import requests

from tests.conftest import TINY_V15_STEP_FRAMES, Service, error_of, extra_app, in_flight, wait_until

LONG = {"text": "这是一个很长的句子，用来测试故障。" * 40, "max_len": 600}  # 600 steps: seconds on CPU
# 600 steps over 6 sentences (112 steps each, the last cut short): 5 seams of a 10 ms crossfade
LONG_FRAMES = 600 * TINY_V15_STEP_FRAMES - 5 * 441


def wav_frames(body: bytes) -> int:
    """PCM16 mono frames after the streaming WAV header."""
    return (len(body) - 44) // 2


@pytest.fixture
def app_url(request: pytest.FixtureRequest, service: Service, checkpoints: Path) -> Iterator[str]:
    """An app of the test's own: its name is the test's, its model settings from the marker."""
    marker = request.node.get_closest_marker("model")
    name = request.node.name.removeprefix("test_").replace("_", "-")[:40]
    with extra_app(service, checkpoints, name, **(marker.kwargs if marker else {})) as url:
        yield url


@pytest.mark.model(deployments={"VoxCPMModel": {"max_ongoing_requests": 2, "max_queued_requests": 1}})
def test_past_capacity_requests_get_503_fast_and_accepted_streams_finish(app_url: str) -> None:
    """Two streams fill the replica (one generating, one waiting for it) and one more may wait in Serve's
    router: of two further requests one waits there, the other is refused at once with Retry-After, and
    so is the next (by the edge, before its form is read). Status answers all the while, from the
    replica's reports rather than a request slot; once the streams end, requests are taken again."""
    pool = ThreadPoolExecutor(4)  # a waiting stream's headers wait for its first chunk
    stream = f"{app_url}/api/tts/stream"
    accepted = [pool.submit(requests.post, stream, data=LONG, stream=True) for _ in range(2)]
    assert wait_until(lambda: in_flight(app_url) == 2, 10)
    late = [pool.submit(requests.post, stream, data={"text": "排队。", "max_len": 2}) for _ in range(2)]
    first_done = next(as_completed(late, timeout=5))
    shed = first_done.result()
    assert shed.status_code == 503
    assert shed.elapsed.total_seconds() < 2  # refused by the router, not after waiting
    assert shed.headers["retry-after"] == "1"
    assert error_of(shed)["code"] == "overloaded"
    again = requests.post(stream, data={"text": "再排队。", "max_len": 2})  # still full: refused at the edge
    assert again.status_code == 503 and again.elapsed.total_seconds() < 1
    assert again.headers["retry-after"] == "1" and error_of(again)["code"] == "overloaded"
    started = time.monotonic()
    assert requests.get(f"{app_url}/health", timeout=5).json()["status"] == "ok"
    assert in_flight(app_url) == 2
    assert time.monotonic() - started < 3  # no status call waited for a slot
    for future in accepted:
        response = future.result()
        assert response.status_code == 200
        assert wav_frames(response.raw.read()) == LONG_FRAMES
    (queued,) = [future for future in late if future is not first_done]
    assert queued.result().status_code == 200
    pool.shutdown()
    assert requests.post(stream, data={"text": "好了。", "max_len": 2}).status_code == 200


def test_replica_killed_mid_stream(app_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The client sees a broken stream (no chunked terminator), the ingress logs it with the request id,
    Serve replaces the replica and the next request succeeds."""
    import ray

    request_id = f"kill-{time.monotonic_ns()}"
    response = requests.post(f"{app_url}/api/tts/stream", data=LONG, stream=True, headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    chunks = response.iter_content(4096)
    next(chunks)
    app = app_url.rsplit("/", 1)[1]
    (replica,) = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#VoxCPMModel#")
    ]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for _ in chunks:
            pass
    assert wait_until(lambda: requests.get(f"{app_url}/health").status_code == 200, 60)
    again = requests.post(f"{app_url}/api/tts/stream", data={"text": "又好了。", "max_len": 3})
    assert again.status_code == 200
    assert wav_frames(again.content) == 3 * TINY_V15_STEP_FRAMES
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    logged = [
        line
        for path in logs.glob(f"replica_{app}_TTSIngress_*.log")
        for line in path.read_text().splitlines()
        if request_id in line and "stream failed after the response started" in line
    ]
    assert len(logged) == 1, "logged once, with the request id"


def test_a_client_that_never_reads_does_not_hold_the_model(app_url: str) -> None:
    """Serve's proxy buffers what a client has not read (bounded by max_len's audio), so the generation
    runs to its end at full speed and the replica is free; request_timeout_s ends the connection."""
    stalled = requests.post(f"{app_url}/api/tts/stream", data=LONG, stream=True)
    assert stalled.status_code == 200
    assert wait_until(lambda: in_flight(app_url) == 0, 60)
    quick = requests.post(f"{app_url}/api/tts/stream", data={"text": "下一个。", "max_len": 2}, timeout=10)
    assert quick.status_code == 200
    assert wav_frames(stalled.raw.read()) == LONG_FRAMES  # nothing was lost


def test_rollout_lets_in_flight_streams_finish(app_url: str, service: Service, checkpoints: Path) -> None:
    """Redeploying with a changed config replaces every replica; the old ones drain their streams first."""
    from ray import serve

    from serve_app.app import from_config_file
    from tests.conftest import LOCAL_CONFIG

    app = app_url.rsplit("/", 1)[1]
    response = requests.post(f"{app_url}/api/tts/stream", data=LONG, stream=True)
    assert response.status_code == 200
    pieces = response.iter_content(65536)  # one iterator: dropping one closes the connection
    body = bytearray(next(pieces))
    changed, _ = from_config_file(
        LOCAL_CONFIG,
        args_overrides={"voices_dir": str(checkpoints.parent / "voices"), "limits": {"max_text_chars": 4000}},
        source=str(checkpoints / "tiny-voxcpm1.5"),
    )
    rollout = threading.Thread(target=serve.run, args=(changed,), kwargs={"name": app, "route_prefix": f"/{app}"})
    rollout.start()
    for piece in pieces:
        body += piece
    rollout.join(120)
    assert wav_frames(bytes(body)) == LONG_FRAMES
    too_long = requests.post(f"{app_url}/api/tts/stream", data={"text": "长" * 4500})
    assert too_long.status_code == 413  # the new config serves now


def test_a_client_leaving_api_tts_stops_its_generation(app_url: str) -> None:
    """The non-streaming API too: the replica stops at the next sentence, not at the end of the text."""
    form = {**LONG, "max_len": 4096, "retry_badcase": "false"}  # 40 sentences: a minute on CPU
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{app_url}/api/tts", data=form, timeout=(5, 2))  # gives up, closing the connection
    assert wait_until(lambda: in_flight(app_url) == 0, 15)
    quick = requests.post(f"{app_url}/api/tts/stream", data={"text": "下一个。", "max_len": 2}, timeout=10)
    assert quick.status_code == 200
