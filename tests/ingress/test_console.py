"""What the console says at start about who may call a deployment."""

from __future__ import annotations

import logging

import pytest

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AccessConfig
from serve_app.ingress import console
from serve_app.ingress.auth import Keyring


@pytest.mark.parametrize(
    ("access", "said"),
    [
        ({}, "only clients on this machine (loopback) are served"),
        ({"allow_anonymous": True}, "ANONYMOUS ACCESS"),
        ({"api_keys": ["k"]}, None),
    ],
)
def test_a_deployment_without_keys_says_loudly_whom_it_serves(
    access: dict, said: str | None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in (API_KEYS_ENV, ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV):
        monkeypatch.delenv(env, raising=False)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        console.announce_access(Keyring(AccessConfig.model_validate(access)))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and said in warnings[0]
