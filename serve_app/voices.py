"""Saved voices: a reference recording and its transcript, stored once, used by id.

A voice is a directory ``<root>/<id>/`` holding ``audio.flac`` (mono, the upload's own rate,
24-bit), optionally ``reference.flac`` (an isolated reference recording for VoxCPM2, used beside the
first as a continuation prompt) and ``voice.json``. A designed voice's ``audio.flac`` is a sample
the service generated from a description, which it keeps with it (see ``Voice.description``).
A voice is written beside its final place and renamed into it, so a reader never sees half a voice.
Ids are random 32-hex strings and every id is checked against that shape before it touches a path:
no client string ever becomes a file name. Put the root on storage every node mounts (NFS, a
Kubernetes volume) when model replicas run on several nodes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.errors import NotFound

_VOICE_ID = re.compile(r"^[0-9a-f]{32}$")
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

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "digest"}


class VoiceStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def create(
        self,
        name: str,
        text: str,
        samples: np.ndarray,
        sample_rate: int,
        reference: tuple[np.ndarray, int] | None = None,
        description: str | None = None,
    ) -> Voice:
        """A voice from a recording and its transcript, with an isolated reference beside it, or (with
        ``description``) from a sample generated from that description."""
        self.root.mkdir(parents=True, exist_ok=True)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        digest = hashlib.sha256(samples.tobytes() + f"|{sample_rate}|{text}".encode())
        if reference is not None:
            reference = (np.ascontiguousarray(reference[0], dtype=np.float32), reference[1])
            digest.update(f"|reference|{reference[1]}|".encode() + reference[0].tobytes())
        voice = Voice(
            voice_id=uuid.uuid4().hex,
            name=name,
            text=text,
            sample_rate=sample_rate,
            seconds=len(samples) / sample_rate,
            digest=digest.hexdigest(),
            created=time.time(),
            kind="recording" if description is None else "designed",
            description=description,
            reference_seconds=None if reference is None else len(reference[0]) / reference[1],
        )
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            sf.write(staging / _AUDIO, samples, sample_rate, format="FLAC", subtype="PCM_24")
            if reference is not None:
                sf.write(staging / _REFERENCE, reference[0], reference[1], format="FLAC", subtype="PCM_24")
            (staging / _META).write_text(json.dumps(asdict(voice), ensure_ascii=False))
            staging.rename(self.root / voice.voice_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return voice

    def list(self) -> list[Voice]:
        if not self.root.is_dir():
            return []
        voices = [self._read(path.name) for path in self.root.iterdir() if _VOICE_ID.match(path.name)]
        return sorted((v for v in voices if v is not None), key=lambda v: v.created)

    def get(self, voice_id: str, field: str = "voice_id") -> Voice:
        voice = self._read(voice_id) if _VOICE_ID.match(voice_id) else None
        if voice is None:
            raise NotFound(f"no saved voice {voice_id!r}", field)
        return voice

    def find(self, id_or_name: str, field: str) -> Voice:
        """By id, else by name (the most recent voice of that name; in any case when none matches exactly)."""
        if _VOICE_ID.match(id_or_name) and (voice := self._read(id_or_name)) is not None:
            return voice
        voices = self.list()
        named = [v for v in voices if v.name == id_or_name] or [
            v for v in voices if v.name.casefold() == id_or_name.casefold()
        ]
        if not named:
            raise NotFound(f"no saved voice {id_or_name!r}", field)
        return named[-1]

    def audio(self, voice: Voice, reference: bool = False) -> tuple[np.ndarray, int]:
        """The voice's recording, or with ``reference`` its isolated reference recording."""
        samples, rate = sf.read(self.root / voice.voice_id / (_REFERENCE if reference else _AUDIO), dtype="float32")
        return samples, rate

    def delete(self, voice_id: str) -> None:
        voice = self.get(voice_id)
        shutil.rmtree(self.root / voice.voice_id)

    def _read(self, voice_id: str) -> Voice | None:
        try:
            return Voice(**json.loads((self.root / voice_id / _META).read_text()))
        except (OSError, ValueError, TypeError):
            return None
