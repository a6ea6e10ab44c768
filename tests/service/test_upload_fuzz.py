"""A fixed slice of the upload fuzz campaign (benchmarks/fuzz_uploads.py runs thousands) through the session's
real service: each allow-listed container's valid file is read and its mangled ones are read or refused, mutated
adapter files are refused or accepted, broken multipart bodies are refused; always a 2xx or a 4xx in the
contract's shape, never a 5xx, a dropped connection or a hang, and the service speaks normally afterwards.
The files are made by tests/fuzz_corpus.py from a fixed seed (nothing binary is committed).
"""

from __future__ import annotations

import random

import pytest
import requests

from tests.conftest import V2_MODEL, Service
from tests.fuzz_bodies import ckpt_case, safetensors_case
from tests.fuzz_corpus import CONTAINERS, TTS_FIELDS, V2, Case, Layout, audio_seed, case, send, served_layout

SEED = 20261207
TIMEOUT_S = 30  # no answer within this: a hang
MANGLED_PER_CONTAINER = 4  # and one valid: 21 containers x 5
ADAPTER_CASES = MULTIPART_CASES = 25


@pytest.fixture(scope="module")
def layout() -> Layout:
    return served_layout()


@pytest.fixture(scope="module")
def bases(service: Service) -> dict[str, str]:
    return {"v1.5": service.url, V2: service.multi_url, "v2-model": V2_MODEL}


def problems(cases: list[Case], bases: dict[str, str]) -> list[str]:
    """Every case sent; what went wrong with each, if anything (all of them, not only the first)."""
    found = []
    for made in cases:
        outcome = send(made, bases, TIMEOUT_S)
        status = outcome.status
        wrong = outcome.failed or not outcome.shape_ok or (made.expect == "2xx" and not str(status).startswith("2"))
        if wrong:
            found.append(f"{made.label} -> {status} {outcome.text[:200]}")
    return found


def still_speaks(bases: dict[str, str]) -> None:
    files = {"prompt_audio": ("prompt.wav", audio_seed("wav", 16000, 1, 5), "audio/wav")}
    response = requests.post(
        f"{bases['v1.5']}/api/tts", data={**TTS_FIELDS, "prompt_text": "参考"}, files=files, timeout=TIMEOUT_S
    )
    assert response.status_code == 200 and response.content[:4] == b"RIFF", response.text[:300]


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_each_containers_valid_file_is_read_and_its_mangled_ones_never_get_a_5xx(
    container: str, bases: dict[str, str], layout: Layout
) -> None:
    cases = [case(SEED, 0, layout, "audio", container, valid=True)]
    cases += [case(SEED, index, layout, "audio", container) for index in range(1, 1 + MANGLED_PER_CONTAINER)]
    assert problems(cases, bases) == []
    still_speaks(bases)


def test_mutated_adapter_files_are_refused_or_accepted_never_a_5xx(bases: dict[str, str], layout: Layout) -> None:
    rng = random.Random(SEED)
    valid = [("lora_weights.safetensors", safetensors_case), ("lora_weights.ckpt", ckpt_case)]
    cases = []
    for index, (filename, make) in enumerate(valid):  # the campaign's valid files are accepted
        data, how = make(layout, rng, True)
        files = {"weights": (filename, data, "application/octet-stream")}
        cases.append(Case(SEED, -1 - index, "adapter", "/api/adapters", how, {"name": how}, files, expect="2xx"))
    cases += [case(SEED, index, layout, "adapter") for index in range(ADAPTER_CASES)]
    assert problems(cases, bases) == []
    still_speaks(bases)


def test_broken_multipart_bodies_are_refused_never_a_5xx(bases: dict[str, str], layout: Layout) -> None:
    cases = [case(SEED, index, layout, "multipart") for index in range(MULTIPART_CASES)]
    assert problems(cases, bases) == []
    still_speaks(bases)
