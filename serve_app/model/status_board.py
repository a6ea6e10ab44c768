"""The status board deployment: every model replica's latest report, readable while replicas are full.

A model replica takes at most ``max_ongoing_requests`` requests, and Serve counts every call
against that limit (broadcasts included), so a replica busy with generations cannot answer a
status call. Instead each replica publishes what it serves and how it is to this board, on every
change and at least every ``PUBLISH_PERIOD_S``; ``/health`` and ``/api/gpu/status`` read the board.
A report older than ``STALE_AFTER_S`` is a replica that is gone (or whose event loop is stuck) and
is dropped. The board holds no state worth keeping: if it restarts, reports refill within a period.
"""

from __future__ import annotations

import time

from ray import serve

from serve_app.model.types import ModelInfo, ReplicaStatus

PUBLISH_PERIOD_S = 1.0
STALE_AFTER_S = 5.0


# On the head node, which is always there: a 0-CPU actor would not keep an autoscaled GPU worker busy, so
# the autoscaler could remove the node under the board.
ON_THE_HEAD = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


@serve.deployment(name="StatusBoard", num_replicas=1, max_ongoing_requests=1000, ray_actor_options=ON_THE_HEAD)
class StatusBoard:
    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, ModelInfo, ReplicaStatus]] = {}

    async def publish(self, info: ModelInfo, status: ReplicaStatus) -> None:
        self._reports[status.replica_id] = (time.monotonic(), info, status)

    async def reports(self) -> list[tuple[ModelInfo, ReplicaStatus]]:
        """The live replicas' latest reports, oldest replica first."""
        oldest_fresh = time.monotonic() - STALE_AFTER_S
        self._reports = {replica: report for replica, report in self._reports.items() if report[0] >= oldest_fresh}
        return [(info, status) for _, info, status in self._reports.values()]
