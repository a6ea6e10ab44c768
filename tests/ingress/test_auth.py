"""API keys and the tenants they stand for, from the config and the environment."""

from __future__ import annotations

import pytest

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AccessConfig
from serve_app.ingress.auth import Keyring, parse_key
from serve_app.store.tenants import Principal


def test_key_forms() -> None:
    assert parse_key("alice=s3cret", admin=False)[1].tenant == "alice"
    key, caller = parse_key("c2VjcmV0IGtleQ==", admin=False)  # base64 padding is part of a bare key
    assert key == b"c2VjcmV0IGtleQ==" and caller.tenant.startswith("key-")
    assert parse_key("k", admin=True)[1].admin
    assert "s3cret" not in parse_key("alice=s3cret", admin=False)[1].key_id


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, " a=one , two ,")
    monkeypatch.setenv(ADMIN_KEYS_ENV, "ops=three")
    keyring = Keyring(AccessConfig())
    assert keyring.principal("one") == Principal("a", False, parse_key("a=one", False)[1].key_id)
    assert keyring.principal("two") is not None and keyring.principal("three").admin  # type: ignore[union-attr]
    assert keyring.principal("one ") is None and keyring.principal("") is None
    assert not Keyring(AccessConfig()).allow_anonymous
    monkeypatch.setenv(ALLOW_ANONYMOUS_ENV, "true")
    assert Keyring(AccessConfig()).allow_anonymous
