"""Saved voices: a reference recording and its transcript, stored once, used by id, owned by a tenant.

A voice is a directory ``<root>/<id>/`` holding ``audio.flac`` (mono, the upload's own rate,
24-bit), optionally ``reference.flac`` (an isolated reference recording for VoxCPM2, used beside the
first as a continuation prompt) and ``voice.json``. A designed voice's ``audio.flac`` is a sample
the service generated from a description, which it keeps with it (see ``Voice.description``).

Ownership: a voice belongs to the tenant that saved it (``owner``), and only that tenant sees, uses
and deletes it; to anyone else it does not exist. Voices saved by admins, and every voice saved before
tenants existed, are shared (``owner`` null): usable by all, changed by admins only.

Durability, concurrency and ids: ``durable.py`` (a voice is whole or absent after a crash; names and
quotas decided under the store's lock; no client string ever becomes a file name). A voice may carry a
LoRA adapter (``adapter_id``, of the model it was saved for): requests naming the voice then speak with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.config import TenantQuotas
from serve_app.errors import NotFound
from serve_app.store import tenants
from serve_app.store.durable import RECORD_ID, STALE_STAGING_S, DurableDirectory, new_id, write_durably
from serve_app.store.tenants import Principal

__all__ = ["STALE_STAGING_S", "Voice", "VoiceStore"]

_AUDIO = "audio.flac"
_REFERENCE = "reference.flac"
_META = "voice.json"


@dataclass(frozen=True)
class Voice:
    voice_id: str
    name: str
    text: str
    sample_rate: int
    seconds: float
    digest: str  # of the recordings and transcript: a replica's prompt cache key
    created: float
    kind: str = "recording"  # "recording": uploaded; "designed": a sample generated from ``description``
    # VoxCPM2: the description a designed voice was made with; requests naming the voice without
    # instructions of their own get it, with the sample as an isolated reference, so it stays one speaker.
    description: str | None = None
    reference_seconds: float | None = None  # of reference.flac, when the voice has one
    owner: str | None = None  # the tenant that saved it; None: shared (an admin's, or saved before tenants)
    bytes: int = 0  # its recordings on disk, counted against its owner's quota
    adapter_id: str | None = None  # a LoRA adapter requests naming the voice speak with (store/adapter_store.py)
    lexicon_ids: tuple[str, ...] = ()  # pronunciation lexicons for requests naming the voice and none of their own

    def __post_init__(self) -> None:
        object.__setattr__(self, "lexicon_ids", tuple(self.lexicon_ids))  # read back from JSON as a list

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "digest"}

    def visible_to(self, caller: Principal) -> bool:
        return tenants.visible_to(self, caller)


class VoiceStore:
    def __init__(self, root: str | Path, quotas: TenantQuotas | None = None) -> None:
        self.records = DurableDirectory(root, "voice")
        self.root = self.records.root
        quotas = quotas or TenantQuotas(voices=None, voice_bytes=None)
        self._quota = (("quotas.voices", quotas.voices), ("quotas.voice_bytes", quotas.voice_bytes))

    def recover(self) -> None:
        self.records.recover()

    def create(
        self,
        caller: Principal,
        name: str,
        text: str,
        samples: np.ndarray,
        sample_rate: int,
        reference: tuple[np.ndarray, int] | None = None,
        description: str | None = None,
        adapter_id: str | None = None,
        lexicon_ids: tuple[str, ...] = (),
    ) -> Voice:
        """A voice from a recording and its transcript, with an isolated reference beside it, or (with
        ``description``) from a sample generated from that description; owned by the caller's tenant, or
        shared when an admin saves it."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        digest = hashlib.sha256(samples.tobytes() + f"|{sample_rate}|{text}".encode())
        if reference is not None:
            reference = (np.ascontiguousarray(reference[0], dtype=np.float32), reference[1])
            digest.update(f"|reference|{reference[1]}|".encode() + reference[0].tobytes())
        voice = Voice(
            voice_id=new_id(),
            name=name,
            text=text,
            sample_rate=sample_rate,
            seconds=len(samples) / sample_rate,
            digest=digest.hexdigest(),
            created=time.time(),
            kind="recording" if description is None else "designed",
            description=description,
            reference_seconds=None if reference is None else len(reference[0]) / reference[1],
            owner=None if caller.admin else caller.tenant,
            adapter_id=adapter_id,
            lexicon_ids=lexicon_ids,
        )
        with self.records.staging("audio") as staging:
            size = _write_flac(staging / _AUDIO, samples, sample_rate)
            if reference is not None:
                size += _write_flac(staging / _REFERENCE, *reference)
            voice = dataclasses.replace(voice, bytes=size)
            write_durably(staging / _META, json.dumps(asdict(voice), ensure_ascii=False).encode())
            self.records.commit(
                staging, voice.voice_id, lambda: tenants.admit(voice, self._all(), caller, "voice", self._quota)
            )
        return voice

    def check_room(self, caller: Principal, incoming: int = 1) -> None:
        """403 for a tenant that cannot keep one more voice, checked before its upload is read."""
        tenants.check_room(self._all(), caller, "voice", self._quota, incoming)

    def list(self, caller: Principal) -> list[Voice]:
        """The voices the caller may use, oldest first: its own and the shared ones (an admin: all)."""
        return [voice for voice in self._all() if voice.visible_to(caller)]

    def get(self, voice_id: str, caller: Principal, field: str = "voice_id") -> Voice:
        voice = self._read(voice_id)
        if voice is None or not voice.visible_to(caller):
            raise NotFound(f"no saved voice {voice_id!r}", field)
        return voice

    def find(self, id_or_name: str, field: str, caller: Principal) -> Voice:
        """By id, else by name: among the caller's own voices first, then the shared ones (the most recent of
        a name; in any case when none matches exactly)."""
        if (voice := self._read(id_or_name)) is not None and voice.visible_to(caller):
            return voice
        return _found(tenants.named_for(id_or_name, self._all(), caller), id_or_name, field)

    def find_shared(self, id_or_name: str, field: str) -> Voice:
        """A shared voice by id or name: what the deployment's configuration may point at (never a tenant's
        voice, so that no tenant can change what a configured name speaks with)."""
        return _found(shared_voice(id_or_name, self._all()), id_or_name, field)

    def audio(self, voice: Voice, reference: bool = False) -> tuple[np.ndarray, int]:
        """The voice's recording, or with ``reference`` its isolated reference recording."""
        return _read_flac(self.root / voice.voice_id / (_REFERENCE if reference else _AUDIO))

    def delete(self, voice_id: str, caller: Principal) -> None:
        """Gone for every reader at once, and of several concurrent deletes exactly one finds it. Admins may
        also delete a voice whose description cannot be read."""
        voice = self._read(voice_id) if RECORD_ID.match(voice_id) else None
        unreadable = voice is None and caller.admin and RECORD_ID.match(voice_id) and (self.root / voice_id).is_dir()
        if not unreadable and (voice is None or not voice.visible_to(caller)):
            raise NotFound(f"no saved voice {voice_id!r}", "voice_id")
        if voice is not None:
            tenants.check_delete(voice, caller, "voice", "voice_id")
        if not self.records.discard(voice_id):  # a concurrent delete took it first
            raise NotFound(f"no saved voice {voice_id!r}", "voice_id")

    def _all(self) -> list[Voice]:
        return self.records.read_all(_META, Voice)

    def _read(self, voice_id: str) -> Voice | None:
        """None unless ``voice_id`` is a record id of a readable voice."""
        return self.records.read(voice_id, _META, Voice)


def shared_voice(id_or_name: str, voices: Iterable[Voice]) -> Voice | None:
    """Among ``voices``, the shared one with this id, else this name (``tenants.named``): what a configured
    name (``openai.voices``) speaks with."""
    shared = [voice for voice in voices if voice.owner is None]
    by_id = [voice for voice in shared if voice.voice_id == id_or_name]
    return by_id[0] if by_id else tenants.named(id_or_name, shared)


def _found(voice: Voice | None, id_or_name: str, field: str) -> Voice:
    if voice is None:
        raise NotFound(f"no saved voice {id_or_name!r}", field)
    return voice


def _read_flac(path: Path) -> tuple[np.ndarray, int]:
    """A recording this store wrote, read as the FLAC it must be: libsndfile cannot be told which format to
    read (it guesses from the bytes), so what it guessed is checked before a sample is read."""
    with sf.SoundFile(path) as source:
        if source.format != "FLAC":
            raise ValueError(f"{path} holds {source.format}, not the FLAC this store writes")
        return source.read(dtype="float32"), source.samplerate


def _write_flac(path: Path, samples: np.ndarray, rate: int) -> int:
    """Encoded in memory, then written: a full disk then fails the write with its own OSError (libsndfile
    writing to a file reports a short write as an assertion)."""
    encoded = io.BytesIO()
    sf.write(encoded, samples, rate, format="FLAC", subtype="PCM_24")
    write_durably(path, encoded.getvalue())
    return len(encoded.getvalue())
