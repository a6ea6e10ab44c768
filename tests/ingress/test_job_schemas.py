"""The job body: document or items, each item's settings over the job's defaults, ranges named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.ingress.job_schemas import JobRequest


def test_items_take_the_defaults_they_leave_out() -> None:
    body = JobRequest.model_validate(
        {"items": [{"text": "一。", "seed": 3}, {"id": "b", "text": "二。"}], "defaults": {"seed": 7, "voice_id": "v"}}
    )
    first, second = (item.settings(body.defaults) for item in body.items or [])
    assert (first["seed"], first["voice_id"]) == (3, "v") and (second["seed"], second["voice_id"]) == (7, "v")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"document": "x", "items": [{"text": "y"}]}, None),
        ({}, None),
        ({"items": []}, "items"),
        ({"items": [{"text": "  "}]}, "text"),
        ({"items": [{"text": "x", "cfg_value": 9}]}, "cfg_value"),
        ({"document": "x", "speed": 1.0, "extra": 1}, "extra"),
        ({"items": [{"text": "x", "id": "i" * 101}]}, "id"),
    ],
)
def test_bad_bodies_name_the_field(body: dict, field: str | None) -> None:
    with pytest.raises(ValidationError) as refused:
        JobRequest.model_validate(body)
    if field is not None:
        assert field in str(refused.value.errors()[0]["loc"])
