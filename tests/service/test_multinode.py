"""A real two-node Ray cluster on this machine: model replicas on the (fake) GPU node, the ingress and the
status board on the head, a stream through both. Runs benchmarks/cluster.py --check in its own process
(its own cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, free_port


def test_prod_graph_schedules_model_replicas_on_the_gpu_node() -> None:
    result = subprocess.run(
        [sys.executable, "cluster.py", "--check", "--port", str(free_port())],
        cwd=REPO / "benchmarks",
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]  # Ray prints too
    where = json.loads(line)
    (gpu_node,) = where["gpu_nodes"]
    assert gpu_node != where["head_node"]
    assert where["model_nodes"] == where["model_nodes_reported"] == [gpu_node]
    assert where["ingress_nodes"] == [where["head_node"]]
    assert where["status_board_nodes"] == [where["head_node"]]  # pinned: GPU workers may be scaled away
    assert where["model_devices"] == ["cpu"]  # Ray set CUDA_VISIBLE_DEVICES, but there is no CUDA here
    assert where["stream_audio_s"] > 0
