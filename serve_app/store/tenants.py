"""Who owns what is stored: a tenant, or the shared space admins keep (``ingress/auth.py`` finds the caller)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from serve_app.errors import Conflict, Forbidden, QuotaExceeded

# A tenant's quota on one kind of record: (config field, most records), (config field, most bytes).
Quota = tuple[tuple[str, int | None], tuple[str, int | None]]


@dataclass(frozen=True)
class Principal:
    """One authenticated caller: its tenant, whether it is an admin, and an id for per-key counting that
    never contains the key itself."""

    tenant: str
    admin: bool
    key_id: str


class Owned(Protocol):
    """A stored record as ownership sees it (a voice, an adapter)."""

    name: str
    owner: str | None  # the tenant that saved it; None: shared (an admin's)
    bytes: int


def visible_to(record: Owned, caller: Principal) -> bool:
    """A tenant sees its own records and the shared ones; an admin sees all."""
    return caller.admin or record.owner is None or record.owner == caller.tenant


def check_delete(record: Owned, caller: Principal, what: str, field: str) -> None:
    """A shared record is deleted by admins only (403); a tenant's, by its tenant (others never see it)."""
    if record.owner is None and not caller.admin:
        raise Forbidden(f"this {what} is shared: only an admin key may delete it", field)


Record = TypeVar("Record", bound=Owned)


def named(name: str, *groups: Sequence[Record]) -> Record | None:
    """The most recent record (the last listed) of the first group holding ``name``: exactly, else in any case."""
    for group in groups:
        found = [r for r in group if r.name == name] or [r for r in group if r.name.casefold() == name.casefold()]
        if found:
            return found[-1]
    return None


def named_for(name: str, records: Sequence[Record], caller: Principal) -> Record | None:
    """By name, among the caller's own records first (an admin's: the shared ones), then the shared ones."""
    own = [r for r in records if r.owner == (None if caller.admin else caller.tenant)]
    return named(name, own, [r for r in records if r.owner is None])


def admit(record: Owned, existing: Iterable[Owned], caller: Principal, what: str, quota: Quota) -> None:
    """A new record's name once per tenant (once among the shared ones), and the tenant's quotas (count,
    bytes; ``quota`` names them as the config does): refused with 409 or 403 naming why. Admins are not
    counted: their records are the shared ones."""
    ours = [other for other in existing if other.owner == record.owner]
    if any(other.name.casefold() == record.name.casefold() for other in ours):
        raise Conflict(f"a {what} named {record.name!r} exists already; delete it or choose another name", "name")
    check_room(ours, caller, what, quota, record.bytes)


def check_room(existing: Iterable[Owned], caller: Principal, what: str, quota: Quota, incoming: int = 0) -> None:
    """Whether the caller's tenant may keep one more record of at least ``incoming`` bytes (403 naming the quota):
    at commit, and before an upload is read at all, so a tenant at its quota costs the service no upload."""
    if caller.admin:
        return
    ours = [other for other in existing if other.owner == caller.tenant]
    (count_field, most), (bytes_field, most_bytes) = quota
    used = sum(other.bytes for other in ours)
    if most is not None and len(ours) + 1 > most:
        raise QuotaExceeded(f"a tenant keeps at most {most} {what}s", count_field)
    if most_bytes is not None and used + incoming > most_bytes:
        raise QuotaExceeded(
            f"this {what} ({incoming} bytes) would take the tenant past its {most_bytes} bytes of saved "
            f"{what}s ({used} used)",
            bytes_field,
        )
