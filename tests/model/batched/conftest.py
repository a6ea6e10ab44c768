"""One pair of engines per preset for the whole package: the reference engine and a batched one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from serve_app.store.voice_store import VoiceStore
from tests.model.batched.engines import PRESETS


@pytest.fixture(scope="package", params=PRESETS)
def engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic_engine: Callable[..., Any]
) -> Iterator[tuple]:
    voices = VoiceStore(tmp_path_factory.mktemp("voices"))
    common = dict(dtype="bfloat16", voices=voices, batch_invariant=True)
    reference = synthetic_engine(request.param, **common)
    batched = synthetic_engine(
        request.param, "batched", max_batch_size=4, kv_cache_length=512, first_step_alone=True, **common
    )  # first_step_alone (off by default) so that every exactness test also joins newcomers that way
    yield reference, batched, voices
    batched.close()
    reference.close()
    torch.backends.mkldnn.enabled = True  # batch_invariant turned it off for the process
