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
    try:
        info = await asyncio.wait_for(service.probe_model(), STATUS_TIMEOUT_S)
        replicas = await _running_replicas(service.deployment_name)
    except Exception as exc:  # noqa: BLE001 - loading, restarting or unreachable all mean not ready
        return JSONResponse({"status": "unavailable", "detail": type(exc).__name__, "models": []}, 503)
    model = {**dataclasses.asdict(info), "replicas_running": replicas}
    ready = bool(replicas)
    return JSONResponse({"status": "ok" if ready else "unavailable", "models": [model]}, 200 if ready else 503)


@router.get("/api/gpu/status", summary="GPUs and model replicas' memory (NVML)")
async def gpu_status(service: Annotated[SynthesisService, Depends(synthesis_service)]) -> dict[str, Any]:
    replica = await asyncio.wait_for(service.replica_status(), STATUS_TIMEOUT_S)
    return {
        "cuda_available": bool(replica.gpus),
        "message": None if replica.gpus else "no NVIDIA GPU on the model replica's node; running on CPU",
        "gpus": [{**gpu, "node_id": replica.node_id} for gpu in replica.gpus],
        "replicas": [dataclasses.asdict(replica)],
    }
