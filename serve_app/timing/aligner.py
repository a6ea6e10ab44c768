"""Word times heard in the audio: a CTC acoustic model and forced alignment, where the config names one.

``aligner:`` names a CTC checkpoint (a wav2vec2 / MMS alignment model, as transformers loads it: a hub id or a
local directory), fetched as the weights are (``serve_app/hub.py``); a hub that cannot be reached is a loud
fallback to estimated times, as synthetic weights are for the model. Aligning a segment: the model's frame
log-probabilities over its characters, then torchaudio's ``forced_align`` (Viterbi over the transcript's
tokens) and ``merge_tokens``; each word spans its first token's first frame to its last token's last. Text
the model has no token for (digits for a letters-only model, scripts it was not trained on) cannot be
heard: those words take the time between their neighbours, and a segment with none it can hear, or too
short for its tokens, is estimated instead (the answer says which: ``source``).

It runs in the ingress, on a thread of its own (one OpenMP pool: ``serve_app/model/engine.py`` says why),
one segment at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import soxr
import torch

from serve_app import hub
from serve_app.config import AlignerConfig
from serve_app.timing.words import Word, words

logger = logging.getLogger("ray.serve")


class Aligner:
    """One CTC model, aligning transcripts to the audio that speaks them."""

    def __init__(self, model: Any, tokenizer: Any, features: Any) -> None:
        self._model = model.eval()
        self._vocabulary: dict[str, int] = tokenizer.get_vocab()
        self._blank = int(tokenizer.pad_token_id)
        self._rate = int(getattr(features, "sampling_rate", 16000))
        self._normalize = bool(getattr(features, "do_normalize", True))
        self._frame_s = math.prod(model.config.conv_stride) / self._rate
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")
        self._failure_logged = False

    @classmethod
    def load(cls, config: AlignerConfig) -> Aligner | None:
        """The configured model, or None (said loudly) where it cannot be had: times are then estimated."""
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

        try:
            path = config.source if hub.is_local(config.source) else hub.fetch(config.source, config.cache_dir)
            aligner = cls(
                AutoModelForCTC.from_pretrained(path),
                AutoTokenizer.from_pretrained(path),
                AutoFeatureExtractor.from_pretrained(path),
            )
        except (hub.HubUnavailable, OSError, ValueError) as exc:
            logger.warning(
                "ALIGNER UNAVAILABLE: %s could not be loaded (%s); word timestamps are estimated from each "
                "sentence's exact duration (source: estimated) until it can be.",
                config.source,
                exc,
            )
            return None
        logger.info(
            "aligner %s loaded: %d tokens, %.0f ms frames",
            config.source,
            len(aligner._vocabulary),
            1e3 * aligner._frame_s,
        )
        return aligner

    async def align(self, text: str, samples: np.ndarray, rate: int) -> list[Word] | None:
        """``text``'s words timed in ``samples`` (seconds from their start), or None where it cannot hear them or
        the alignment fails on this text: that segment is then estimated, never an error (logged once)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.align_now, text, samples, rate)
        except Exception as exc:  # noqa: BLE001 - whatever a text makes the model or forced_align raise
            if not self._failure_logged:
                self._failure_logged = True
                logger.warning("aligner failed (%s: %s); such segments are estimated", type(exc).__name__, exc)
            return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @torch.inference_mode()
    def align_now(self, text: str, samples: np.ndarray, rate: int) -> list[Word] | None:
        """``align``, on the caller's thread."""
        spoken = words(text)
        tokens = [self._tokens(word) for word in spoken]
        targets = [token for word_tokens in tokens for token in word_tokens]
        audio = np.asarray(samples, dtype=np.float32)
        if rate != self._rate:
            audio = soxr.resample(audio, rate, self._rate, quality="HQ")
        if self._normalize:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        emission = torch.log_softmax(self._model(torch.from_numpy(audio)[None]).logits.float(), dim=-1)
        repeats = sum(a == b for a, b in itertools.pairwise(targets))  # CTC puts a blank between repeated tokens
        if not targets or len(targets) + repeats > emission.shape[1]:
            return None
        import torchaudio.functional as F

        aligned, scores = F.forced_align(emission, torch.tensor([targets], dtype=torch.int32), blank=self._blank)
        spans = iter(F.merge_tokens(aligned[0], scores[0].exp()))
        duration = len(samples) / rate
        timed: list[Word] = []
        for word, word_tokens in zip(spoken, tokens, strict=True):
            mine = [next(spans) for _ in word_tokens]
            if mine:
                start, end = mine[0].start * self._frame_s, mine[-1].end * self._frame_s
                timed.append(Word(word, min(start, duration), min(end, duration)))
            else:  # nothing in it the model can hear: at the end of the previous word, for now
                at = timed[-1].end_s if timed else 0.0
                timed.append(Word(word, at, at))
        return _between_neighbours(timed)

    def _tokens(self, word: str) -> list[int]:
        """The model's tokens for the word's characters it has (as written, else in the other case)."""
        found = []
        for character in word:
            for variant in (character, character.lower(), character.upper()):
                if variant in self._vocabulary and self._vocabulary[variant] != self._blank:
                    found.append(self._vocabulary[variant])
                    break
        return found


def _between_neighbours(timed: list[Word]) -> list[Word]:
    """Words that could not be heard (zero length) stretched to end where the next heard word starts."""
    fixed = list(timed)
    for index, word in enumerate(fixed):
        if word.end_s == word.start_s and index + 1 < len(fixed):
            following = next((w.start_s for w in fixed[index + 1 :] if w.end_s > w.start_s), word.start_s)
            fixed[index] = Word(word.word, word.start_s, max(word.start_s, following))
    return fixed
