"""The lexicons a request names, as one rewrite of its text (``text/lexicons.Rewriter``): each looked up as the
caller may use it (another tenant's is a 404 naming ``lexicons``, as an absent one), at most a few a request
(``limits.max_request_lexicons``). A combination's rewrite is built once per ingress replica and kept: a saved
lexicon never changes (a new version is a new lexicon, with a new id)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from serve_app.errors import BadRequest
from serve_app.store.lexicon_store import LexiconStore, SavedLexicon
from serve_app.store.tenants import Principal
from serve_app.text.lexicons import Entry, Lexicon, Rewriter

CACHED = 64  # combinations kept per ingress replica, the least recently used dropped first


class LexiconRewriters:
    def __init__(self, store: LexiconStore) -> None:
        self._store = store
        self._built: OrderedDict[tuple[str, ...], Rewriter] = OrderedDict()

    async def found(self, names: Sequence[str], caller: Principal, most: int) -> list[SavedLexicon]:
        """The lexicons ``names`` (ids or names) name, as the caller may use them."""
        if len(names) > most:
            raise BadRequest(f"a request names at most {most} lexicons (got {len(names)})", "lexicons")
        return [await asyncio.to_thread(self._store.find, name, "lexicons", caller) for name in names]

    async def of(self, names: Sequence[str], caller: Principal, most: int) -> Rewriter:
        """The rewrite for ``names`` (ids or names, the first winning where two say one grapheme)."""
        saved = await self.found(names, caller, most)
        key = tuple(lexicon.lexicon_id for lexicon in saved)
        if (rewriter := self._built.get(key)) is None:
            rewriter = Rewriter(await asyncio.to_thread(lambda: [self._lexicon(lexicon) for lexicon in saved]))
            self._built[key] = rewriter
            while len(self._built) > CACHED:
                self._built.popitem(last=False)
        self._built.move_to_end(key)
        return rewriter

    def _lexicon(self, saved: SavedLexicon) -> Lexicon:
        return Lexicon(tuple(Entry(grapheme, said, case) for grapheme, said, case in self._store.entries(saved)))
