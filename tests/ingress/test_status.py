"""/api/gpu/status: node addresses are for admins."""

from __future__ import annotations

import pytest
import ray

from serve_app.ingress import status


def test_node_addresses_are_for_admins(monkeypatch: pytest.MonkeyPatch) -> None:
    node = {"NodeID": "n1", "NodeManagerAddress": "10.0.0.7", "Alive": True, "Resources": {"GPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [node])
    assert status.gpu_nodes({"n1"}, with_addresses=True)[0]["address"] == "10.0.0.7"
    assert "address" not in status.gpu_nodes({"n1"}, with_addresses=False)[0]
