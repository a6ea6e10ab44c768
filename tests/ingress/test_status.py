"""/api/gpu/status: node addresses are for admins; /health: each model's CUDA graphs."""

from __future__ import annotations

import dataclasses

import pytest
import ray

from serve_app.ingress import status
from serve_app.model.types import ModelInfo


def test_node_addresses_are_for_admins(monkeypatch: pytest.MonkeyPatch) -> None:
    node = {"NodeID": "n1", "NodeManagerAddress": "10.0.0.7", "Alive": True, "Resources": {"GPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [node])
    assert status.gpu_nodes({"n1"}, with_addresses=True)[0]["address"] == "10.0.0.7"
    assert "address" not in status.gpu_nodes({"n1"}, with_addresses=False)[0]


def test_each_models_health_says_whether_its_steps_replay_cuda_graphs() -> None:
    info = ModelInfo("m", "synthetic:tiny", "voxcpm", 44100, 44100, "cuda:0", False, engine="batched", graphs="on")
    assert status._model_health("m", [info])["graphs"] == "on"
    off = dataclasses.replace(info, graphs="off: mismatch")
    assert status._model_health("m", [off])["graphs"] == "off: mismatch"
