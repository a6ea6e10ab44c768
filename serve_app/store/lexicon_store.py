"""Pronunciation lexicons: a tenant's entries (a grapheme and what is said for it), stored once, named by
requests and saved voices by id or name.

A lexicon is a directory ``<root>/<id>/`` holding ``entries.json`` (the entries as the ingress read them from
a PLS file or JSON: ``[grapheme, alias, case_sensitive]`` lists) and ``lexicon.json``; never the upload's file
name. Durability, concurrency and ids as for voices (``durable.py``), ownership and quotas too (``tenants.py``):
a tenant sees its own and the shared ones (an admin's), and another tenant's id is a 404 as an absent one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.config import TenantQuotas
from serve_app.errors import NotFound
from serve_app.store import tenants
from serve_app.store.durable import RECORD_ID, DurableDirectory, new_id, write_durably
from serve_app.store.tenants import Principal

_META = "lexicon.json"
_ENTRIES = "entries.json"
StoredEntry = tuple[str, str, bool]  # grapheme, what is said, whether matched case-sensitively


@dataclass(frozen=True)
class SavedLexicon:
    lexicon_id: str
    name: str
    entries: int
    skipped: int  # pronunciations the upload had in alphabets VoxCPM cannot say
    created: float
    owner: str | None = None  # the tenant that saved it; None: shared (an admin's)
    bytes: int = 0  # as uploaded: what the tenant's lexicon_bytes quota counts

    def public(self) -> dict:
        return asdict(self)

    def visible_to(self, caller: Principal) -> bool:
        return tenants.visible_to(self, caller)


class LexiconStore:
    def __init__(self, root: str | Path, quotas: TenantQuotas | None = None) -> None:
        self.records = DurableDirectory(root, "lexicon")
        quotas = quotas or TenantQuotas(lexicons=None, lexicon_bytes=None)
        self._quota = (("quotas.lexicons", quotas.lexicons), ("quotas.lexicon_bytes", quotas.lexicon_bytes))

    def recover(self) -> None:
        self.records.recover()

    def create(self, caller: Principal, name: str, entries: list[StoredEntry], skipped: int, size: int) -> SavedLexicon:
        """The entries saved for the caller's tenant (an admin's: shared): its name once per tenant, within its
        quotas."""
        lexicon = SavedLexicon(
            new_id(), name, len(entries), skipped, time.time(), None if caller.admin else caller.tenant, size
        )
        with self.records.staging("entries") as staging:
            write_durably(staging / _ENTRIES, json.dumps(entries, ensure_ascii=False).encode())
            write_durably(staging / _META, json.dumps(asdict(lexicon), ensure_ascii=False).encode())
            self.records.commit(
                staging, lexicon.lexicon_id, lambda: tenants.admit(lexicon, self._all(), caller, "lexicon", self._quota)
            )
        return lexicon

    def check_room(self, caller: Principal, incoming: int = 1) -> None:
        """403 for a tenant that cannot keep one more lexicon, checked before its upload is read."""
        tenants.check_room(self._all(), caller, "lexicon", self._quota, incoming)

    def list(self, caller: Principal) -> list[SavedLexicon]:
        return [lexicon for lexicon in self._all() if lexicon.visible_to(caller)]

    def get(self, lexicon_id: str, caller: Principal) -> SavedLexicon:
        lexicon = self._read(lexicon_id)
        if lexicon is None or not lexicon.visible_to(caller):
            raise NotFound(f"no lexicon {lexicon_id!r}", "lexicon_id")
        return lexicon

    def find(self, id_or_name: str, field: str, caller: Principal) -> SavedLexicon:
        """By id, else by name: the caller's own first, then the shared ones (the most recent of a name)."""
        if (lexicon := self._read(id_or_name)) is not None and lexicon.visible_to(caller):
            return lexicon
        if (lexicon := tenants.named_for(id_or_name, self._all(), caller)) is None:
            raise NotFound(f"no lexicon {id_or_name!r}", field)
        return lexicon

    def entries(self, lexicon: SavedLexicon) -> list[StoredEntry]:
        try:
            stored = json.loads((self.records.path(lexicon.lexicon_id) / _ENTRIES).read_text())
        except FileNotFoundError:  # deleted since it was looked up
            raise NotFound(f"no lexicon {lexicon.lexicon_id!r}", "lexicons") from None
        return [(grapheme, said, bool(case)) for grapheme, said, case in stored]

    def delete(self, lexicon_id: str, caller: Principal) -> None:
        lexicon = self.get(lexicon_id, caller)
        tenants.check_delete(lexicon, caller, "lexicon", "lexicon_id")
        if not self.records.discard(lexicon_id):  # a concurrent delete took it first
            raise NotFound(f"no lexicon {lexicon_id!r}", "lexicon_id")

    def _all(self) -> list[SavedLexicon]:
        return self.records.read_all(_META, SavedLexicon)

    def _read(self, lexicon_id: str) -> SavedLexicon | None:
        return self.records.read(lexicon_id, _META, SavedLexicon) if RECORD_ID.match(lexicon_id) else None
