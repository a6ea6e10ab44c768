"""Encoded prompts: a request's recordings, or a saved voice, as voxcpm's ``build_prompt_cache`` encodes
them, kept by content so that a client re-sending the same reference pays for encoding once.

Prompt audio travels one way from upload to model: decoded and resampled to the model's prompt rate once
(the ingress for uploads, here for saved voices), then handed to voxcpm's own loader as an in-memory WAV
(its loaders read a file-like object as they read a path, so the bits are voxcpm's). Only the denoiser,
which takes paths, gets files: in a private directory, with random names, removed after use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf

from serve_app.audio.decode import resample
from serve_app.errors import NotFound
from serve_app.model.capabilities import REFERENCE_AUDIO
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest
from serve_app.store.voice_store import Voice, VoiceStore


class PromptCache:
    """Encoded prompts by content (each recording's audio, rate and transcript, denoise), least recently used
    dropped first. Thread-safe: the batched engine encodes beside its loop thread (``batched/prompt_workers.py``)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(prompt: PromptAudio | None, reference: PromptAudio | None, denoise: bool) -> str:
        """Keyed on both recordings: a reference with one continuation prompt is another prompt than with another."""
        digest = hashlib.sha256(f"{denoise}".encode())
        for role, audio in (("prompt", prompt), ("reference", reference)):
            if audio is not None:
                digest.update(f"|{role}|{audio.sample_rate}|{audio.text or ''}|".encode())
                digest.update(np.ascontiguousarray(audio.samples, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def get(self, key: str, count_miss: bool = True) -> Any | None:
        """The entry, or None; ``count_miss``: whether None counts as a miss (not where the encoding that follows
        looks again, and counts it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += count_miss
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def put(self, key: str, entry: Any) -> None:
        if self._capacity <= 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


class PromptEncoder:
    """One model's prompts: encoded with its ``build_prompt_cache``, kept in its :class:`PromptCache`."""

    def __init__(self, model: Any, info: ModelInfo, denoiser: Any, voices: VoiceStore | None, cache_size: int) -> None:
        self._model = model
        self._info = info
        self._denoiser = denoiser
        self._voices = voices
        self.cache = PromptCache(cache_size)
        self._denoise_dir: Path | None = None  # made when the denoiser first needs files

    def close(self) -> None:
        if self._denoise_dir is not None:
            shutil.rmtree(self._denoise_dir, ignore_errors=True)

    def cached(self, request: SynthesisRequest) -> Any | None:
        """The request's recordings or saved voice as encoded before (a hit), or None (``encoded`` follows)."""
        return self.cache.get(self._key(request), count_miss=False)

    def encoded(self, request: SynthesisRequest) -> Any:
        """The request's recordings or saved voice, encoded: from the cache when it is there.

        A saved voice is its recording as a continuation prompt, with its isolated reference recording
        beside it where the model takes one (VoxCPM 1.x takes the first alone). With instructions, only an
        isolated reference (the voice's reference recording, else its recording without transcript): the
        description then styles that voice, which it could not do to a continuation."""
        voice = request.voice
        key = self._key(request)
        encoded = self.cache.get(key)
        if encoded is None:
            if voice is None:
                encoded = self.encode(request.prompt, request.reference, request.denoise)
            else:
                recording = self._voice_recording(voice)
                takes_reference = REFERENCE_AUDIO in self._info.capabilities
                reference = self._voice_recording(voice, reference=True) if takes_reference else None
                if request.instructions:
                    recording, reference = None, reference or dataclasses.replace(recording, text=None)
                encoded = self.encode(recording, reference, request.denoise)
            self.cache.put(key, encoded)
        return encoded

    def _key(self, request: SynthesisRequest) -> str:
        if (voice := request.voice) is None:
            return PromptCache.key(request.prompt, request.reference, request.denoise)
        takes_reference = REFERENCE_AUDIO in self._info.capabilities
        return f"voice:{voice.digest}:{request.denoise}:{bool(request.instructions)}:{takes_reference}"

    def encode(self, prompt: PromptAudio | None, reference: PromptAudio | None, denoise: bool) -> Any:
        """voxcpm's ``build_prompt_cache``: a recording with its transcript is a continuation prompt, one
        without (VoxCPM2) or given as ``reference`` an isolated reference; both together: "ref_continuation"."""
        with contextlib.ExitStack() as files:
            recordings: dict[str, Any] = {}
            if reference is not None:
                recordings["reference_wav_path"] = files.enter_context(self._wav(reference, denoise))
            if prompt is not None:
                wav = files.enter_context(self._wav(prompt, denoise))
                if prompt.text:
                    recordings.update(prompt_text=prompt.text, prompt_wav_path=wav)
                else:
                    recordings["reference_wav_path"] = wav
            return self._model.build_prompt_cache(**recordings)

    def _voice_recording(self, voice: Voice, reference: bool = False) -> PromptAudio | None:
        """A saved voice's recording with its transcript (or its isolated reference recording, none when it
        has none), read from the shared store at the model's prompt rate."""
        if self._voices is None:
            raise NotFound("this model has no voice store", "voice_id")
        if reference and voice.reference_seconds is None:
            return None
        try:
            samples, rate = self._voices.audio(voice, reference)
        except (OSError, sf.LibsndfileError):  # deleted since the ingress looked it up
            raise NotFound(f"no saved voice {voice.voice_id!r}", "voice_id") from None
        target = self._info.prompt_sample_rate
        text = None if reference else voice.text
        return PromptAudio(samples=resample(samples, rate, target), sample_rate=target, text=text)

    @contextlib.contextmanager
    def _wav(self, prompt: PromptAudio, denoise: bool) -> Iterator[IO[bytes] | str]:
        """The recording as voxcpm's loaders take it: an in-memory WAV, or with ``denoise`` the denoiser's
        output file (the denoiser reads and writes paths only)."""
        wav = io.BytesIO()
        sf.write(wav, prompt.samples, prompt.sample_rate, format="WAV", subtype="FLOAT")
        wav.seek(0)
        if not denoise:
            yield wav
            return
        if self._denoise_dir is None:
            self._denoise_dir = Path(tempfile.mkdtemp(prefix=f"voxcpm-denoise-{os.getpid()}-"))  # pid: whose it is
        with (
            tempfile.NamedTemporaryFile(dir=self._denoise_dir, suffix=".wav") as noisy,
            tempfile.NamedTemporaryFile(dir=self._denoise_dir, suffix=".wav") as clean,
        ):
            noisy.write(wav.getvalue())
            noisy.flush()
            self._denoiser.enhance(noisy.name, output_path=clean.name)
            yield clean.name
