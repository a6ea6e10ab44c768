"""The model replicas' latest reports, kept by each ingress replica for ``/health``, ``/ready`` and
``/api/gpu/status``.

One background task asks the status board once a period; the probes read what it last got, so a flood of
probes (they need no key) costs no remote call each, and a board that is slow or restarting delays no
probe for long: past ``STALE_AFTER_S`` without an answer the probes say the service is unavailable.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection

from ray.serve.handle import DeploymentHandle

from serve_app.errors import Unavailable
from serve_app.model.status_board import PUBLISH_PERIOD_S
from serve_app.model.types import ModelInfo, ReplicaStatus

POLL_PERIOD_S = PUBLISH_PERIOD_S  # replicas report once a period: asking more often learns nothing
# While a model has no report yet (its replicas are starting), a probe asks again at most this often rather
# than wait for the next poll: ready is said within moments of being true, and a flood still costs little.
EAGER_PERIOD_S = 0.1
ASK_TIMEOUT_S = 5.0
STALE_AFTER_S = 10.0

Report = tuple[ModelInfo, ReplicaStatus]


class ReplicaReports:
    def __init__(self, board: DeploymentHandle) -> None:
        self._board = board
        self._reports: list[Report] = []
        self._received_at: float | None = None  # monotonic
        self._asked_at = -math.inf
        self._why = "the status board has not answered yet"
        self._asking: asyncio.Future[None] | None = None
        self._polling = asyncio.get_running_loop().create_task(self._poll())

    async def latest(self, models: Collection[str] = ()) -> list[Report]:
        """What every live model replica last reported. When one of ``models`` has no report yet, the board
        is asked again first (at most every ``EAGER_PERIOD_S``, one question shared by every caller)."""
        reported = {info.name for info, _ in self._reports}
        if self._received_at is None or not reported.issuperset(models):
            if time.monotonic() - self._asked_at >= EAGER_PERIOD_S:
                await self._ask()
        if self._received_at is None or time.monotonic() - self._received_at > STALE_AFTER_S:
            raise Unavailable(f"{self._why}; retry shortly")
        return self._reports

    def check(self) -> None:
        """Raises once the poller has stopped (the ingress's health check): the probes would then answer from a
        report that never changes, and every status call would be a 503."""
        if self._polling.done():
            error = None if self._polling.cancelled() else self._polling.exception()
            raise RuntimeError(f"the replica reports' poller has stopped ({error!r})") from error

    def close(self) -> None:
        self._polling.cancel()

    async def _poll(self) -> None:
        while True:
            await self._ask()
            await asyncio.sleep(POLL_PERIOD_S)

    async def _ask(self) -> None:
        """One question to the board, shared by whoever asks while it is out (a caller that goes away does
        not cancel it for the others)."""
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._fetch())
            self._asking.add_done_callback(lambda _: setattr(self, "_asking", None))
        await asyncio.shield(self._asking)

    async def _fetch(self) -> None:
        self._asked_at = time.monotonic()
        try:
            self._reports = await asyncio.wait_for(self._board.reports.remote(), ASK_TIMEOUT_S)
            self._received_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - whatever keeps the board from answering, try again
            self._why = f"the status board did not answer ({type(exc).__name__})"
