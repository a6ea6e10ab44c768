"""Reproducible requests through the real service: the same request with the same ``seed`` gives the same audio,
alone or inside a batch of other requests (bit for bit where the engine is exact: batch_invariant with a
bfloat16 model; otherwise within the engine's float32 tolerance), and another seed other audio."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from websockets.sync.client import connect

from tests.conftest import FLOAT32_TOLERANCE, Service, error_of, extra_app, run

TARGET = {"text": "同一个种子，同一段声音。", "max_len": 30, "seed": 7}
# Longer requests of their own, started first, so that the target is generated inside a batch of them.
OTHERS = [{"text": "别的请求也在生成。" * 3, "max_len": 120, "seed": seed} for seed in (1, 2, 3)]
PCM16 = 32768


def audio(url: str, form: dict) -> np.ndarray:
    response = requests.post(f"{url}/api/tts", data=form, timeout=120)
    assert response.status_code == 200, response.text[:200]
    return sf.read(io.BytesIO(response.content), dtype="int16")[0].astype(np.int32)


def in_a_batch(url: str, form: dict) -> np.ndarray:
    with ThreadPoolExecutor(len(OTHERS) + 1) as pool:
        others = [pool.submit(audio, url, other) for other in OTHERS]
        target = audio(url, form)
        for other in others:
            other.result()
    return target


@pytest.fixture(scope="module")
def exact_url(service: Service, checkpoints: Path, synthetic_checkpoint: Callable[..., Path]) -> Iterator[str]:
    """The batched engine at its exactness: a bfloat16 model and batch-invariant kernels."""
    source = str(synthetic_checkpoint("tiny-voxcpm1.5", "bfloat16"))
    with extra_app(service, checkpoints, "exact", source=source, batch_invariant=True) as url:
        yield url


def test_the_same_seed_gives_the_same_audio_alone_and_in_a_batch(url: str) -> None:
    alone = audio(url, TARGET)
    assert np.array_equal(audio(url, TARGET), alone)  # the same batch (of one): the same bits
    batched = in_a_batch(url, TARGET)
    assert batched.shape == alone.shape
    assert np.abs(batched - alone).max() <= FLOAT32_TOLERANCE * PCM16 + 1  # float32 on CPU: within tolerance
    other = audio(url, {**TARGET, "seed": 8})
    assert np.abs(other - alone).mean() > 100  # another seed: other noise, other audio


def test_bit_for_bit_where_the_engine_is_exact(exact_url: str) -> None:
    alone = audio(exact_url, TARGET)
    assert np.array_equal(in_a_batch(exact_url, TARGET), alone)
    assert not np.array_equal(audio(exact_url, {**TARGET, "seed": 8}), alone)


def test_the_websocket_and_the_command_line_take_a_seed(url: str, tmp_path: Path) -> None:
    def spoken() -> bytes:
        with connect(url.replace("http://", "ws://") + "/api/tts/ws", open_timeout=30) as ws:
            ws.send(json.dumps({"type": "init", "seed": 11, "max_len": 10}))
            ws.recv(timeout=30)  # ready
            ws.send(json.dumps({"type": "text", "text": "一句话。"}))
            ws.send(json.dumps({"type": "end"}))
            frames = []
            while isinstance(message := ws.recv(timeout=60), bytes) or json.loads(message)["type"] != "done":
                if isinstance(message, bytes):
                    frames.append(message)
        return b"".join(frames)

    assert spoken() == spoken()
    outputs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for out in outputs:
        said = run(url, "say", "一句话。", "--seed", "11", "--max-len", "10", "-o", str(out), "-q")
        assert said.returncode == 0, said.stderr
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


@pytest.mark.parametrize("seed", ["-1", str(2**63), "x"])
def test_a_seed_out_of_range_is_refused_naming_it(url: str, seed: str) -> None:
    response = requests.post(f"{url}/api/tts", data={"text": "你好", "seed": seed}, timeout=30)
    assert response.status_code == 422 and error_of(response)["field"] == "seed"
