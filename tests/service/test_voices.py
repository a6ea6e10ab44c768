"""Saved voices through the real service: stored, listed, used by id or name on every endpoint, deleted; no
path games; uploads that are no audio refused at once, holding up nothing; a full store answers 507.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.audio.test_containers import bound_udp_ports, free_udp_port, sdp
from tests.conftest import (
    TINY_V2_STEP_FRAMES,
    TINY_V15_STEP_FRAMES,
    V2_MODEL,
    Service,
    error_of,
    extra_app,
    openai_error_of,
    prompt_cache,
    save_voice,
)


def test_voice_lifecycle(url: str, reference_wav: Path) -> None:
    voice = save_voice(url, reference_wav)
    assert set(voice) >= {"voice_id", "name", "text", "sample_rate", "seconds"}
    assert voice["sample_rate"] == 16000 and voice["seconds"] == pytest.approx(2.0)
    assert voice in requests.get(f"{url}/api/voices").json()["voices"]
    assert requests.get(f"{url}/api/voices/{voice['voice_id']}").json() == voice
    assert requests.delete(f"{url}/api/voices/{voice['voice_id']}").status_code == 204
    gone = requests.get(f"{url}/api/voices/{voice['voice_id']}")
    assert gone.status_code == 404 and error_of(gone)["field"] == "voice_id"


def test_a_saved_voice_is_encoded_once_per_replica(url: str, reference_wav: Path) -> None:
    # the cache is keyed by content: a transcript no other test uses makes this voice new to the replica
    voice = save_voice(url, reference_wav, name="once", text="只在这个测试里用的文本")
    hits, misses = prompt_cache(url)
    for _ in range(3):
        response = requests.post(
            f"{url}/api/tts/stream", data={"text": "保存的声音", "voice_id": voice["voice_id"], "max_len": 4}
        )
        assert response.status_code == 200
        assert len(response.content) == 44 + 4 * TINY_V15_STEP_FRAMES * 2
    assert prompt_cache(url) == (hits + 2, misses + 1)


def test_voice_on_every_endpoint_and_every_model(service: Service, reference_wav: Path) -> None:
    voice = save_voice(service.url, reference_wav, name="everywhere")
    by_name = requests.post(
        f"{service.url}/api/tts",
        data={"text": "名字", "voice_id": "everywhere", "max_len": 4, "retry_badcase": "false"},
    )
    assert by_name.status_code == 200
    for voice_field in (voice["voice_id"], "everywhere"):
        speech = requests.post(
            f"{service.url}/v1/audio/speech",
            json={"model": "tts-1", "voice": voice_field, "input": "你好", "response_format": "pcm", "max_len": 3},
        )
        assert speech.status_code == 200, speech.text
    v2 = requests.post(
        f"{service.multi_url}/api/tts/stream",
        data={"text": "共享", "voice_id": voice["voice_id"], "max_len": 3, "model": V2_MODEL},
    )
    assert v2.status_code == 200  # the store is shared by every deployment that names it
    assert len(v2.content) == 44 + 3 * TINY_V2_STEP_FRAMES * 2


@pytest.mark.parametrize("voice_id", ["../../etc/passwd", "..%2F..%2Fetc", "0" * 31, "a" * 33, "nonexistent"])
def test_unknown_or_malformed_ids_are_404_and_touch_no_path(url: str, voice_id: str) -> None:
    assert requests.get(f"{url}/api/voices/{voice_id}").status_code == 404
    response = requests.post(f"{url}/api/tts/stream", data={"text": "x", "voice_id": voice_id})
    assert response.status_code == 404
    assert error_of(response)["field"] == "voice_id"
    response = requests.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": voice_id, "input": "x"})
    assert response.status_code == 404
    assert openai_error_of(response)["field"] == "voice"


def test_refusals(url: str, reference_wav: Path) -> None:
    voice = save_voice(url, reference_wav, name="refusals")
    with open(reference_wav, "rb") as audio:
        both = requests.post(
            f"{url}/api/tts/stream",
            data={"text": "x", "voice_id": voice["voice_id"], "prompt_text": "y"},
            files={"prompt_audio": audio},
        )
    assert both.status_code == 422 and error_of(both)["field"] == "voice_id"
    not_audio = requests.post(
        f"{url}/api/voices", data={"name": "n", "text": "t"}, files={"audio": ("v.wav", b"not audio", "audio/wav")}
    )
    assert not_audio.status_code == 415 and error_of(not_audio)["field"] == "audio"
    with open(reference_wav, "rb") as audio:
        no_text = requests.post(f"{url}/api/voices", data={"name": "n"}, files={"audio": audio})
    assert no_text.status_code == 422 and error_of(no_text)["field"] == "text"
    no_audio = requests.post(f"{url}/api/voices", data={"name": "n", "text": "t"})
    assert no_audio.status_code == 422 and error_of(no_audio)["field"] == "audio"
    with open(reference_wav, "rb") as audio:
        blank = requests.post(f"{url}/api/voices", data={"name": "   ", "text": "t"}, files={"audio": audio})
    assert blank.status_code == 422 and error_of(blank)["field"] == "name"


def test_session_descriptions_as_voices_are_415_at_once_and_hold_up_nothing(url: str) -> None:
    """The attack: an SDP text sent as a voice made FFmpeg bind the UDP ports it names and wait for packets,
    holding a thread of the ingress's default executor; eight at once were answered after 20-40 s and a
    listing meanwhile took 17 s. Now each is refused from its first bytes, and the listing is not delayed."""
    ports = [free_udp_port() for _ in range(8)]

    def upload(port: int) -> tuple[requests.Response, float]:
        started = time.monotonic()
        files = {"audio": ("voice.sdp", sdp(port), "application/sdp")}
        response = requests.post(
            f"{url}/api/voices", data={"name": f"sdp {port}", "text": "t"}, files=files, timeout=60
        )
        return response, time.monotonic() - started

    with ThreadPoolExecutor(len(ports)) as clients:
        uploads = [clients.submit(upload, port) for port in ports]
        started = time.monotonic()
        listing = requests.get(f"{url}/api/voices", timeout=60)
        listed_in = time.monotonic() - started
        answers = [upload.result() for upload in uploads]
    assert listing.status_code == 200 and listed_in < 2
    for response, took in answers:
        assert response.status_code == 415 and error_of(response)["field"] == "audio", response.text
        assert took < 2
    assert not set(ports) & bound_udp_ports()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 256 KiB file system of its own (tmpfs; root can mount one where the machine allows it)."""
    path = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_a_full_voice_store_answers_507_through_the_service(
    service: Service, checkpoints: Path, small_disk: Path, reference_wav: Path
) -> None:
    noise = io.BytesIO()
    sf.write(noise, np.random.default_rng(1).uniform(-0.5, 0.5, 48000 * 5), 48000, format="WAV")
    with extra_app(service, checkpoints, "fulldisk", {"voices_dir": str(small_disk)}) as url:
        full = requests.post(
            f"{url}/api/voices", data={"name": "too big", "text": "t"}, files={"audio": ("n.wav", noise.getvalue())}
        )
        assert full.status_code == 507, full.text
        assert error_of(full)["code"] == "insufficient_storage"
        assert [p.name for p in small_disk.iterdir() if p.name != ".lock"] == []  # nothing half-written
        saved = save_voice(url, reference_wav)  # what fits still saves
        assert [p.name for p in small_disk.iterdir() if p.name != ".lock"] == [saved["voice_id"]]
