"""Who owns what is stored: a tenant, or the shared space admins keep (``ingress/auth.py`` finds the caller)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """One authenticated caller: its tenant, whether it is an admin, and an id for per-key counting that
    never contains the key itself."""

    tenant: str
    admin: bool
    key_id: str
