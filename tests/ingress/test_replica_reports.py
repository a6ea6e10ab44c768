"""The ingress's view of the model replicas: probes answered from reports it keeps, not a call each."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from serve_app.errors import Unavailable
from serve_app.ingress import replica_reports
from serve_app.ingress.replica_reports import ReplicaReports


class Board:
    """A status board handle that counts the calls it is asked; it knows the replicas of ``models``."""

    def __init__(self, models: tuple[str, ...] = ("m",)) -> None:
        self.calls = 0
        self.answers = True
        self.models = models
        self.reports = self

    def remote(self) -> Any:
        self.calls += 1

        async def answer() -> list:
            await asyncio.sleep(0.001)
            if not self.answers:
                raise ConnectionError("board gone")
            return [(Info(name), "status") for name in self.models]

        return answer()


@dataclass(frozen=True)
class Info:
    name: str


def test_probes_read_what_one_poll_a_period_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_reports, "POLL_PERIOD_S", 0.05)

    async def scenario() -> tuple[int, int]:
        board = Board()
        reports = ReplicaReports(board)  # type: ignore[arg-type]
        latest = await asyncio.gather(*(reports.latest(["m"]) for _ in range(500)))
        assert all(answer == [(Info("m"), "status")] for answer in latest)
        await asyncio.sleep(0.12)
        reports.close()
        return board.calls, len(latest)

    calls, probes = asyncio.run(scenario())
    assert probes == 500 and 1 <= calls <= 4


def test_a_model_not_reported_yet_is_asked_for_again_soon_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a deploy the ingress may have polled before the model replica reported: a probe asks
    again rather than say "not ready" for a whole period, and a flood of probes shares one question."""
    monkeypatch.setattr(replica_reports, "POLL_PERIOD_S", 60.0)
    monkeypatch.setattr(replica_reports, "EAGER_PERIOD_S", 0.05)

    async def scenario() -> None:
        board = Board(models=())
        reports = ReplicaReports(board)  # type: ignore[arg-type]
        assert await reports.latest(["m"]) == []
        board.models = ("m",)  # the replica reports
        asked = board.calls
        await asyncio.gather(*(reports.latest(["m"]) for _ in range(200)))
        assert board.calls == asked  # within the eager period: no question
        await asyncio.sleep(0.06)
        answers = await asyncio.gather(*(reports.latest(["m"]) for _ in range(200)))
        assert board.calls == asked + 1 and answers[0] == [(Info("m"), "status")]
        reports.close()

    asyncio.run(scenario())


def test_a_board_that_stops_answering_makes_the_probes_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_reports, "POLL_PERIOD_S", 0.01)
    monkeypatch.setattr(replica_reports, "STALE_AFTER_S", 0.05)

    async def scenario() -> None:
        board = Board()
        reports = ReplicaReports(board)  # type: ignore[arg-type]
        assert await reports.latest()
        board.answers = False
        await asyncio.sleep(0.1)
        with pytest.raises(Unavailable, match="did not answer"):
            await reports.latest()
        reports.close()

    asyncio.run(scenario())
