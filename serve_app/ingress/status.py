"""``GET /health``, ``GET /ready`` and ``GET /api/gpu/status``, answered from what model replicas report to
the status board (a replica starts reporting once it has loaded and warmed up its model), as this ingress
replica last read it (``replica_reports.py``): a probe makes no remote call."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

import ray
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.errors import Unavailable
from serve_app.ingress.dependencies import caller, model_client, replica_reports
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.replica_reports import ReplicaReports
from serve_app.model.types import ModelInfo
from serve_app.store.tenants import Principal

router = APIRouter(tags=["status"])

Models = Annotated[ModelClient, Depends(model_client)]
Reports = Annotated[ReplicaReports, Depends(replica_reports)]


@router.get("/health", summary="Liveness and model state")
async def health(models: Models, reports: Reports) -> JSONResponse:
    """Ready when every model has a replica that reported to the status board in the last few seconds
    (a replica's reports go on while all its request slots are taken: a full service is ready)."""
    try:
        by_model = await _reports_by_model(models, reports)
    except Unavailable as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.message}, 503)
    states = [_model_health(name, infos) for name, infos in by_model.items()]
    ready = all(state["replicas_running"] for state in states)
    body = {"status": "ok" if ready else "unavailable", "default_model": models.default_model, "models": states}
    return JSONResponse(body, 200 if ready else 503)


@router.get("/ready", summary="Readiness for probes: 200 once every model has a warmed replica, else 503")
async def ready(models: Models, reports: Reports) -> JSONResponse:
    """For Kubernetes Deployments' readiness probes, ``docker run``'s health check and load balancers:
    traffic may come once every configured model can take it. Not for a KubeRay head pod, which KubeRay
    needs Ready before it deploys the application at all (configs/kuberay-rayservice.yaml)."""
    try:
        by_model = await _reports_by_model(models, reports)
    except Unavailable as exc:
        waiting, detail = models.model_names, exc.message
    else:
        waiting = [name for name, infos in by_model.items() if not infos]
        detail = "no replica of these models has loaded and warmed up yet"
    if waiting:
        return JSONResponse({"status": "not_ready", "models_not_ready": waiting, "detail": detail}, 503)
    return JSONResponse({"status": "ready", "models": models.model_names}, 200)


async def _reports_by_model(models: ModelClient, reports: ReplicaReports) -> dict[str, list[ModelInfo]]:
    """Each configured model's live replicas, as their reports to the status board describe them."""
    latest = await reports.latest(models.model_names)
    return {name: [info for info, _ in latest if info.name == name] for name in models.model_names}


def _model_health(name: str, infos: list[ModelInfo]) -> dict[str, Any]:
    facts = dataclasses.asdict(infos[0]) if infos else {"name": name}
    return {**facts, "replicas_running": len(infos)}


@router.get("/api/gpu/status", summary="GPUs of the whole cluster and every model replica's memory (NVML)")
async def gpu_status(reports: Reports, who: Annotated[Principal, Depends(caller)]) -> dict[str, Any]:
    """Every model replica reports its node's GPUs (NVML) and the memory it holds to the status board
    (at most a second or two old); Ray's view of the cluster adds GPU nodes that host no replica right now
    (an idle autoscaled worker). Node addresses are for admins: they map the cluster's network."""
    replicas = [status for _, status in await reports.latest()]
    gpus = {(r.node_id, gpu["uuid"]): {**gpu, "node_id": r.node_id} for r in replicas for gpu in r.gpus}
    nodes = await asyncio.to_thread(gpu_nodes, {r.node_id for r in replicas if r.gpus}, who.admin)
    return {
        "cuda_available": bool(gpus),
        "message": None if gpus else "no NVIDIA GPU on the model replicas' nodes; running on CPU",
        "gpus": list(gpus.values()),
        "nodes": nodes,
        "replicas": [dataclasses.asdict(replica) for replica in replicas],
    }


def gpu_nodes(reported: set[str], with_addresses: bool) -> list[dict[str, Any]]:
    """The alive nodes Ray knows to have GPUs, and whether a replica there reported them."""
    return [
        {
            "node_id": node["NodeID"],
            **({"address": node["NodeManagerAddress"]} if with_addresses else {}),
            "gpus": node["Resources"]["GPU"],
            "reported_by_a_replica": node["NodeID"] in reported,
        }
        for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("GPU")
    ]
