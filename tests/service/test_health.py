"""Health checks on the real stack: a model replica whose engine loop dies, hangs in a step or hits a device
error fails Serve's health check, its requests in flight end at once with a clear error (a broken stream, a 503
with Retry-After), never a hang, and Serve replaces it.

Each fault is injected on the engine's loop thread through the replica's ``inject_fault`` (model/deployment.py),
on an app of the test's own whose model replicas alone have it switched on (``FAULTS_ENV``), with short bounds:
a step is stuck after 2 s, the check runs every second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from serve_app.faults import FAULTS_ENV
from serve_app.ingress.replica_reports import ReplicaReports
from tests.conftest import LOCAL_CONFIG, Service, error_of, extra_app, in_flight, wait_until
from tests.service.test_ws import dial, events_until, ws_url

LONG = {"text": "这是一个很长的句子，用来测试健康检查。" * 40, "max_len": 600}  # seconds of generation on CPU
LONG_CLAUSES = "这是一个很长的句子，用来测试健康检查，" * 40
MAX_STEP_S = 2.0
ENDED_WITHIN_S = 15  # the fault, the first failed check (max_step_s + a period), the requests' ends
REPLACED_WITHIN_S = 90  # three failed checks, the drain, a new replica's start


def _deployments() -> dict:
    """Both deployments' replicas (as configs/local.yaml places them) checked every second, with fault injection
    on (and the app's environment, which an actor's own runtime_env replaces)."""
    application = yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]
    runtime_env = {"env_vars": {**application["runtime_env"]["env_vars"], FAULTS_ENV: "1"}}
    return {
        deployment["name"]: {
            "health_check_period_s": 1.0,
            "health_check_timeout_s": 5.0,
            "ray_actor_options": {**deployment["ray_actor_options"], "runtime_env": runtime_env},
        }
        for deployment in application["deployments"]
    }


@pytest.fixture
def app(request: pytest.FixtureRequest, service: Service, checkpoints: Path) -> Iterator[str]:
    name = request.node.name.removeprefix("test_").replace("_", "-").replace("[", "-").rstrip("]")[:40]
    with extra_app(service, checkpoints, name, deployments=_deployments(), max_step_s=MAX_STEP_S) as url:
        yield url


def _replicas(app_name: str, deployment: str = "VoxCPMModel") -> set[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    return {name for name in names if name.startswith(prefix)}


@pytest.mark.parametrize("fault", ["loop_killed", "step_hung", "device_error"])
def test_a_failed_engine_ends_its_requests_and_its_replica_is_replaced(app: str, fault: str) -> None:
    from ray import serve

    app_name = app.rsplit("/", 1)[1]
    (replica,) = _replicas(app_name)
    stream = requests.post(f"{app}/api/tts/stream", data=LONG, stream=True, timeout=(5, 60))
    assert stream.status_code == 200
    chunks = stream.iter_content(4096)
    next(chunks)
    pool = ThreadPoolExecutor(1)
    whole = pool.submit(requests.post, f"{app}/api/tts", data=LONG, timeout=60)
    assert wait_until(lambda: in_flight(app) == 2, 20)

    serve.get_deployment_handle("VoxCPMModel", app_name=app_name).inject_fault.remote(fault).result()
    faulted = time.monotonic()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # the answer had started: it breaks off
        for _ in chunks:
            pass
    refused = whole.result(timeout=ENDED_WITHIN_S)
    assert time.monotonic() - faulted < ENDED_WITHIN_S
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert error_of(refused)["code"] == "unavailable"
    pool.shutdown()

    assert wait_until(lambda: bool(_replicas(app_name) - {replica}), REPLACED_WITHIN_S), "no new replica"
    assert wait_until(lambda: replica not in _replicas(app_name), REPLACED_WITHIN_S), "the old one lives on"
    again = requests.post(f"{app}/api/tts/stream", data={"text": "又好了。", "max_len": 3}, timeout=60)
    assert again.status_code == 200 and len(again.content) > 44


def test_a_websocket_context_in_flight_ends_with_an_error_event_and_the_socket_stays_open(app: str) -> None:
    """The socket's context gets the contract's ``error`` event (the audio made before the fault paced out first),
    not a hang; the socket stays open and speaks again once the replica is replaced."""
    from ray import serve

    app_name = app.rsplit("/", 1)[1]
    (replica,) = _replicas(app_name)
    ws = dial(ws_url(app), max_size=None)
    try:
        ws.send(json.dumps({"type": "init", "max_len": LONG["max_len"]}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": LONG_CLAUSES}))  # spoken in pieces of a few clauses each
        ws.send(json.dumps({"type": "end"}))
        while not isinstance(ws.recv(timeout=60), bytes):  # its audio has started (after its segment's event)
            pass

        serve.get_deployment_handle("VoxCPMModel", app_name=app_name).inject_fault.remote("device_error").result()
        events, _ = events_until(ws, "error", timeout_s=ENDED_WITHIN_S + LONG["max_len"] * 0.1)
        # the stream had started: the contract's code for a generation that broke off, the socket kept
        assert events[-1]["code"] == "stream_failed" and events[-1]["fatal"] is False, events[-1]
        assert "done" not in {event["type"] for event in events}

        assert wait_until(lambda: replica not in _replicas(app_name) and bool(_replicas(app_name)), REPLACED_WITHIN_S)
        ws.send(json.dumps({"type": "text", "text": "又好了。"}))
        ws.send(json.dumps({"type": "end"}))
        events, frames = events_until(ws, "done", timeout_s=60)
        assert frames and "error" not in {event["type"] for event in events}, events
    finally:
        ws.close()


def answers_ready(url: str) -> bool:
    """200 from /ready; a connection the proxy drops or a slow answer while Serve swaps the replica: not yet."""
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_an_ingress_whose_status_poller_stopped_is_replaced(app: str) -> None:
    """The ingress's check: without its poller, /health, /ready and status would answer from a frozen report."""
    from ray import serve

    app_name = app.rsplit("/", 1)[1]
    (replica,) = _replicas(app_name, "TTSIngress")
    serve.get_deployment_handle("TTSIngress", app_name=app_name).inject_fault.remote().result()
    assert wait_until(lambda: bool(_replicas(app_name, "TTSIngress") - {replica}), REPLACED_WITHIN_S), "none new"
    assert wait_until(lambda: replica not in _replicas(app_name, "TTSIngress"), REPLACED_WITHIN_S), "the old lives on"
    assert wait_until(lambda: answers_ready(f"{app}/ready"), REPLACED_WITHIN_S)
    again = requests.post(f"{app}/api/tts", data={"text": "又好了。", "max_len": 3}, timeout=60)
    assert again.status_code == 200 and len(again.content) > 44


def test_the_ingress_check_fails_once_its_status_poller_stops() -> None:
    board = SimpleNamespace(reports=SimpleNamespace(remote=lambda: asyncio.sleep(0, result=[])))

    async def check() -> None:
        reports = ReplicaReports(board)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        reports.check()
        reports.close()
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="poller has stopped"):
            reports.check()

    asyncio.run(check())
