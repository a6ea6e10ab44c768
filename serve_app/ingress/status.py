"""``GET /health`` and ``GET /api/gpu/status``, answered from the model deployment's own state."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

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


@router.get("/api/gpu/status", summary="GPUs and model replicas' memory (NVML)")
async def gpu_status(service: Annotated[SynthesisService, Depends(synthesis_service)]) -> dict[str, Any]:
    """One replica of each model reports its node's GPUs (NVML) and the memory it holds."""
    replicas = await asyncio.wait_for(
        asyncio.gather(*(service.replica_status(name) for name in service.model_names)), STATUS_TIMEOUT_S
    )
    gpus = {(r.node_id, gpu["uuid"]): {**gpu, "node_id": r.node_id} for r in replicas for gpu in r.gpus}
    return {
        "cuda_available": bool(gpus),
        "message": None if gpus else "no NVIDIA GPU on the model replicas' nodes; running on CPU",
        "gpus": list(gpus.values()),
        "replicas": [dataclasses.asdict(replica) for replica in replicas],
    }
