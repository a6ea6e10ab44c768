"""Who is calling: API keys, the tenants they belong to, and admins.

A key is written ``key`` (a tenant of its own, named from a digest of the key) or ``tenant=key`` (so
several keys share a tenant, and a tenant keeps its voices when a key is rotated). Admin keys have the
same forms. Tenants own what they save; admins make the shared things every tenant may use. With no key
configured at all there is one caller, an admin, as before tenants existed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from serve_app.config import ADMIN_KEYS_ENV, ALLOW_ANONYMOUS_ENV, API_KEYS_ENV, AccessConfig, AppConfig
from serve_app.store.tenants import Principal

TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ANONYMOUS = "anonymous"  # the one tenant of a deployment without keys


def anonymous(address: str) -> Principal:
    """The caller of a deployment without keys: the one tenant, an admin; counted per client address."""
    return Principal(ANONYMOUS, admin=True, key_id=f"addr:{address}")


def key_id(key: bytes) -> str:
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


def parse_key(entry: str, admin: bool) -> tuple[bytes, Principal]:
    """``tenant=key`` or a bare ``key``. A bare key containing ``=`` (base64 padding) stays whole: only a
    prefix shaped like a tenant name followed by a non-empty key that does not start with ``=`` names one."""
    name, sep, rest = entry.partition("=")
    if sep and rest and not rest.startswith("=") and TENANT_NAME.match(name):
        key = rest.encode()
        return key, Principal(name, admin, key_id(key))
    key = entry.encode()
    return key, Principal("key-" + hashlib.sha256(key).hexdigest()[:12], admin, key_id(key))


def _entries(configured: Iterable[str], env: str) -> list[str]:
    from_env = os.environ.get(env, "").split(",")
    return [entry.strip() for entry in [*configured, *from_env] if entry.strip()]


class Keyring:
    """The configured keys (config and environment), each with the caller it stands for."""

    def __init__(self, access: AccessConfig) -> None:
        self._keys = [parse_key(entry, admin=False) for entry in _entries(access.api_keys, API_KEYS_ENV)]
        self._keys += [parse_key(entry, admin=True) for entry in _entries(access.admin_keys, ADMIN_KEYS_ENV)]
        env_anonymous = os.environ.get(ALLOW_ANONYMOUS_ENV, "").strip().lower() in ("1", "true", "yes")
        self.allow_anonymous = access.allow_anonymous or env_anonymous

    def __bool__(self) -> bool:
        return bool(self._keys)

    def principal(self, presented: str) -> Principal | None:
        """The caller a presented key stands for, or None. Every key is compared, in constant time, so
        timing tells nothing about which (if any) matched."""
        token = presented.encode()
        found = None
        for key, principal in self._keys:
            if hmac.compare_digest(token, key) and found is None:
                found = principal
        return found


EX_CONFIG = 78  # sysexits.h: a configuration error
REFUSAL = f"""voxcpm-serve: refusing to start without API keys: anyone who can reach this container's port
could use the service and its saved voices.
  Set {API_KEYS_ENV} to one or more keys (comma-separated, each `key` or `tenant=key`), e.g.
      export {API_KEYS_ENV}=$(openssl rand -hex 16)
      docker run -e {API_KEYS_ENV} ...        (compose: the same export, then docker compose up)
  and {ADMIN_KEYS_ENV} for admins (the same form), or write them in the Serve config's
  args.access.api_keys.
  To serve everyone without a key instead, ask for it: -e {ALLOW_ANONYMOUS_ENV}=true"""


def main(argv: list[str]) -> int:
    """The image's start-up check (docker/entrypoint.sh, ``python -m serve_app.ingress.auth [SERVE_CONFIG]``): a
    container's port is reachable beyond loopback, so it refuses to start an application without keys unless
    anonymous access is asked for; read exactly as the ingress reads them (:class:`Keyring`)."""
    accesses = [AccessConfig()]
    if argv and argv[0]:
        try:
            applications = yaml.safe_load(Path(argv[0]).read_text()).get("applications") or []
            accesses = [AppConfig.model_validate(app.get("args") or {}).access for app in applications]
        except (OSError, yaml.YAMLError, ValueError, AttributeError) as exc:
            print(f"voxcpm-serve: cannot read the Serve config {argv[0]}: {exc}", file=sys.stderr)
            return EX_CONFIG
    keyrings = [Keyring(access) for access in accesses]
    if all(keyring or keyring.allow_anonymous for keyring in keyrings):
        return 0
    print(REFUSAL, file=sys.stderr)
    return EX_CONFIG


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
