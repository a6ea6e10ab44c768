"""Synthetic checkpoints load through voxcpm's own from_pretrained and have predictable lengths."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.errors import NotFound
from serve_app.model import synthetic
from serve_app.model.engine import joined
from serve_app.model.prompts import PromptCache
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import PromptAudio, SynthesisRequest
from serve_app.store.voice_store import VoiceStore
from tests.conftest import ADMIN, TINY_V2_STEP_FRAMES, TINY_V15_STEP_FRAMES

CASES = [
    ("tiny-voxcpm1.5", "voxcpm", 44100, 44100, TINY_V15_STEP_FRAMES),
    ("tiny-voxcpm2", "voxcpm2", 48000, 16000, TINY_V2_STEP_FRAMES),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def engine(request: pytest.FixtureRequest, synthetic_engine: Callable[..., Any]) -> ReferenceEngine:
    loaded = synthetic_engine(request.param[0], warmup=True)
    loaded.case = request.param  # type: ignore[attr-defined]
    return loaded


def test_architecture_and_rates_come_from_the_model(engine: ReferenceEngine) -> None:
    _, architecture, rate, prompt_rate, _ = engine.case  # type: ignore[attr-defined]
    assert engine.info.architecture == architecture
    assert engine.info.sample_rate == rate
    assert engine.info.prompt_sample_rate == prompt_rate


def test_stop_head_runs_to_voxcpm_length_cap(engine: ReferenceEngine) -> None:
    """Steps = min(6 * text tokens + 10, max_len): a sentence gives seconds of audio, max_len rules."""
    step = engine.case[4]  # type: ignore[attr-defined]
    chunks = list(engine.generate(SynthesisRequest(text="你好世界"), streaming=True))  # 4 tokens -> 34 steps
    assert sum(len(c) for c in chunks) == 34 * step
    assert (
        sum(len(c) for c in engine.generate(SynthesisRequest(text="你好世界" * 10, max_len=7), streaming=True))
        == 7 * step
    )


def test_long_text_is_spoken_sentence_by_sentence(engine: ReferenceEngine) -> None:
    """Two 8-character sentences: 58 steps each, joined by one crossfade; max_len budgets the whole."""
    step = engine.case[4]  # type: ignore[attr-defined]
    seam = int(0.01 * engine.info.sample_rate)
    text = "这是第一个句子。这是第二个句子。"
    streamed = sum(len(c) for c in engine.generate(SynthesisRequest(text=text), streaming=True))
    assert streamed == 2 * 58 * step - seam
    whole = joined(engine.generate(SynthesisRequest(text=text, retry_badcase=False), streaming=False))
    assert abs(len(whole) - streamed) <= step
    assert (
        sum(len(c) for c in engine.generate(SynthesisRequest(text=text, max_len=70), streaming=True))
        == 70 * step - seam
    )


def test_cloning(engine: ReferenceEngine) -> None:
    rate = engine.info.prompt_sample_rate
    prompt = PromptAudio(samples=np.zeros(rate, dtype=np.float32), sample_rate=rate, text="参考")
    audio = joined(
        engine.generate(SynthesisRequest(text="克隆", prompt=prompt, max_len=5, retry_badcase=False), streaming=False)
    )
    assert audio.dtype == np.float32 and audio.size > 0


def test_cli_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "serve_app.model.synthetic", "--preset", "tiny-voxcpm1.5", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert {"config.json", "model.safetensors", "audiovae.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }


def test_ensure_keeps_an_existing_checkpoint(tmp_path: Path) -> None:
    out = synthetic.build("tiny-voxcpm1.5", tmp_path / "ckpt")
    before = (out / "model.safetensors").stat().st_mtime_ns
    synthetic.ensure("tiny-voxcpm1.5", out)
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_full_size_presets_describe_real_architectures() -> None:
    assert synthetic.PRESETS["voxcpm1.5"].vae["sample_rate"] == 44100
    assert synthetic.PRESETS["voxcpm2"].architecture == "voxcpm2"
    assert synthetic.PRESETS["voxcpm-0.5b"].vae["sample_rate"] == 16000


@pytest.mark.parametrize("preset", sorted(synthetic.PRESETS))
def test_every_preset_builds_a_voxcpm_model(preset: str, tmp_path: Path) -> None:
    """voxcpm's own classes accept every preset's dimensions (on the meta device: no memory, no time), so a
    full-size checkpoint for a GPU benchmark does not fail only where it is built."""
    import torch

    with torch.device("meta"):
        config, model = synthetic.instantiate(preset, tmp_path)
    assert type(model).__name__ == ("VoxCPM2Model" if config["architecture"] == "voxcpm2" else "VoxCPMModel")
    assert model.base_lm.config.num_hidden_layers == synthetic.PRESETS[preset].lm_layers


def test_prompt_cache_keeps_the_most_recently_used() -> None:
    cache = PromptCache(capacity=2)
    prompts = [PromptAudio(samples=np.full(10, i, dtype=np.float32), sample_rate=16000, text="t") for i in range(3)]
    keys = [PromptCache.key(p, None, denoise=False) for p in prompts]
    assert len(set(keys)) == 3 and PromptCache.key(prompts[0], None, denoise=True) != keys[0]
    cache.put(keys[0], "a")
    cache.put(keys[1], "b")
    assert cache.get(keys[0]) == "a"
    cache.put(keys[2], "c")  # evicts keys[1], the least recently used
    assert cache.get(keys[1]) is None and cache.get(keys[2]) == "c"
    assert (cache.hits, cache.misses) == (2, 1)


def test_a_voice_deleted_under_a_request_is_not_found(tmp_path: Path, synthetic_engine: Callable[..., Any]) -> None:
    store = VoiceStore(tmp_path / "voices")
    voice = store.create(ADMIN, "gone", "参考", np.zeros(16000, dtype=np.float32), 16000)
    engine = synthetic_engine("tiny-voxcpm1.5", voices=store)
    store.delete(voice.voice_id, ADMIN)
    with pytest.raises(NotFound) as raised:
        list(engine.generate(SynthesisRequest(text="你好", voice=voice, max_len=3), streaming=True))
    assert raised.value.field == "voice_id"
