"""``GET /health`` and ``GET /api/gpu/status``, answered from the model deployment's own state."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

import ray
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from ray import serve

from serve_app.ingress.dependencies import synthesis_service
from serve_app.ingress.synthesis import SynthesisService

router = APIRouter(tags=["status"])

STATUS_TIMEOUT_S = 5.0


async def _running_replicas(deployment: str) -> int | None:
    """How many replicas of ``deployment`` Serve's controller reports RUNNING."""
    app_name = serve.get_replica_context().app_name
    status = await asyncio.to_thread(serve.status)
    app = status.applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return None
    return sum(n for state, n in app.deployments[deployment].replica_states.items() if str(state).endswith("RUNNING"))


@router.get("/health", summary="Liveness and model state")
async def health(service: Annotated[SynthesisService, Depends(synthesis_service)]) -> JSONResponse:
    """Ready when every model has a running replica that answers."""
    models = await asyncio.gather(*(_model_health(service, name) for name in service.model_names))
    ready = all(model.get("replicas_running") for model in models)
    body = {"status": "ok" if ready else "unavailable", "default_model": service.default_model, "models": models}
    return JSONResponse(body, 200 if ready else 503)


async def _model_health(service: SynthesisService, name: str) -> dict[str, Any]:
    try:
        info = await asyncio.wait_for(service.probe_model(name), STATUS_TIMEOUT_S)
        replicas = await _running_replicas(service.deployment_name(name))
    except Exception as exc:  # noqa: BLE001 - loading, restarting or unreachable all mean not ready
        return {"name": name, "replicas_running": 0, "detail": type(exc).__name__}
    return {**dataclasses.asdict(info), "replicas_running": replicas}


@router.get("/api/gpu/status", summary="GPUs of the whole cluster and every model replica's memory (NVML)")
async def gpu_status(service: Annotated[SynthesisService, Depends(synthesis_service)]) -> dict[str, Any]:
    """Every model replica reports its node's GPUs (NVML) and the memory it holds; Ray's view of the
    cluster adds GPU nodes that host no replica right now (an idle autoscaled worker)."""
    per_model = await asyncio.gather(
        *(service.replica_statuses(name, STATUS_TIMEOUT_S) for name in service.model_names)
    )
    replicas = [replica for statuses in per_model for replica in statuses]
    gpus = {(r.node_id, gpu["uuid"]): {**gpu, "node_id": r.node_id} for r in replicas for gpu in r.gpus}
    nodes = await asyncio.to_thread(_gpu_nodes, {r.node_id for r in replicas if r.gpus})
    return {
        "cuda_available": bool(gpus),
        "message": None if gpus else "no NVIDIA GPU on the model replicas' nodes; running on CPU",
        "gpus": list(gpus.values()),
        "nodes": nodes,
        "replicas": [dataclasses.asdict(replica) for replica in replicas],
    }


def _gpu_nodes(reported: set[str]) -> list[dict[str, Any]]:
    """The alive nodes Ray knows to have GPUs, and whether a replica there reported them."""
    return [
        {
            "node_id": node["NodeID"],
            "address": node["NodeManagerAddress"],
            "gpus": node["Resources"]["GPU"],
            "reported_by_a_replica": node["NodeID"] in reported,
        }
        for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("GPU")
    ]
