"""The aligner's plumbing with a small random CTC model built from its config (no checkpoint can be downloaded
here): it loads as a configured checkpoint would, and whatever its random weights hear, every word comes back
once, in order, with times monotonic and inside the audio; an unreachable hub is a loud fallback."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from serve_app.config import AlignerConfig
from serve_app.timing.aligner import Aligner

LETTERS = list("abcdefghijklmnopqrstuvwxyz'")


def tiny_ctc_checkpoint(directory: Path) -> Path:
    """A wav2vec2 CTC model of a few thousand parameters, with a character tokenizer, saved as a release is."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    vocabulary = {"<pad>": 0, "<unk>": 1, "|": 2, **{letter: 3 + i for i, letter in enumerate(LETTERS)}}
    (directory / "vocab.json").write_text(json.dumps(vocabulary))
    tokenizer = Wav2Vec2CTCTokenizer(str(directory / "vocab.json"), word_delimiter_token="|")
    config = Wav2Vec2Config(
        vocab_size=len(vocabulary),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 64),
        conv_kernel=(10, 64),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def aligner(tmp_path_factory: pytest.TempPathFactory) -> Aligner:
    loaded = Aligner.load(AlignerConfig(source=str(tiny_ctc_checkpoint(tmp_path_factory.mktemp("ctc")))))
    assert loaded is not None
    return loaded


@pytest.mark.parametrize(
    "text",
    ["Hello there, how are you today?", "Numbers like 2025 cannot be heard by a letters-only model.", "你好 hello"],
)
def test_every_word_once_in_order_times_monotonic_and_inside_the_audio(aligner: Aligner, text: str) -> None:
    rate, seconds = 24000, 2.0
    samples = np.random.default_rng(0).standard_normal(int(rate * seconds)).astype(np.float32) * 0.1
    timed = asyncio.run(aligner.align(text, samples, rate))
    assert timed is not None
    assert "".join(w.word for w in timed) == "".join(text.split())
    assert all(b.start_s >= a.start_s and b.end_s >= a.end_s for a, b in itertools.pairwise(timed))
    assert all(0 <= w.start_s <= w.end_s <= seconds for w in timed)


def test_too_short_or_unheard_segments_are_left_to_the_estimate(aligner: Aligner) -> None:
    assert asyncio.run(aligner.align("这些都是汉字", np.zeros(16000, np.float32), 16000)) is None  # no token it has
    long_text = "a" * 400
    assert asyncio.run(aligner.align(long_text, np.zeros(1600, np.float32), 16000)) is None  # fewer frames than tokens


def test_an_unreachable_hub_is_a_loud_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert Aligner.load(AlignerConfig(source="nobody/no-such-aligner")) is None
    assert "ALIGNER UNAVAILABLE" in caplog.text and "estimated" in caplog.text


def test_long_runs_of_one_letter_and_any_failure_fall_back_to_the_estimate(
    aligner: Aligner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rate = 16000
    frames = int(aligner._frame_s * rate)
    # as many frames as letters, but a run of one letter needs a blank between each repeat: no alignment exists
    assert asyncio.run(aligner.align("a" * 40, np.zeros(40 * frames, np.float32), rate)) is None

    def broken(*arguments: object) -> None:
        raise RuntimeError("targets length is too long for CTC")

    monkeypatch.setattr(aligner, "align_now", broken)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        for _ in range(3):
            assert asyncio.run(aligner.align("hello", np.zeros(rate, np.float32), rate)) is None
    assert caplog.text.count("aligner failed") == 1  # logged once, not per segment
