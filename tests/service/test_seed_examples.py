"""The seed document's client examples, run as written against the service on port 7861."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests.conftest import TINY_V15_STEP_FRAMES, Service, ffprobe

log = logging.getLogger(__name__)
WAV_HEADER_BYTES = 44


def assert_whole_wav(path: Path, sample_rate: int = 44100) -> int:
    """soundfile reads every PCM16 frame that was sent, at the model's rate; returns the frame count."""
    data, rate = sf.read(path, dtype="int16")
    assert rate == sample_rate
    assert data.ndim == 1
    assert len(data) == (path.stat().st_size - WAV_HEADER_BYTES) // 2
    assert len(data) > 0 and len(data) % TINY_V15_STEP_FRAMES == 0
    return len(data)


def test_requests_streaming_example(service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # --- seed example, verbatim ---
    response = requests.post(
        "http://localhost:7861/api/tts/stream",
        data={"text": "你好，这是流式语音合成。", "inference_timesteps": 5},
        stream=True,
    )  # important: enable streaming receive
    with open("output.wav", "wb") as f:
        for chunk in response.iter_content(chunk_size=8192):
            if chunk:
                f.write(chunk)
                print(f"received {len(chunk)} bytes")
    # ---
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-sample-rate"] == "44100"
    assert response.headers["x-request-id"]
    assert_whole_wav(tmp_path / "output.wav")


def test_requests_cloning_example(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_wav: Path
) -> None:
    shutil.copy(reference_wav, tmp_path / "reference.wav")
    monkeypatch.chdir(tmp_path)
    # --- seed example, verbatim ---
    with open("reference.wav", "rb") as audio_file:
        response = requests.post(
            "http://localhost:7861/api/tts/stream",
            data={"text": "这是克隆的声音。", "prompt_text": "参考音频的文本", "inference_timesteps": 5},
            files={"prompt_audio": audio_file},
            stream=True,
        )
        with open("cloned.wav", "wb") as f:
            for chunk in response.iter_content(8192):
                if chunk:
                    f.write(chunk)
    # ---
    assert response.status_code == 200
    assert_whole_wav(tmp_path / "cloned.wav")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples(service: Service, tmp_path: Path, reference_wav: Path) -> None:
    shutil.copy(reference_wav, tmp_path / "reference.wav")
    seed_commands = [
        'curl -X POST http://localhost:7861/api/tts/stream -F "text=你好世界" -F "inference_timesteps=5" '
        "--output stream_output.wav",
        'curl -X POST http://localhost:7861/api/tts/stream -F "text=克隆的声音" -F "prompt_audio=@reference.wav" '
        '-F "prompt_text=参考文本" --output cloned.wav',
    ]
    for command in seed_commands:
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    for name in ("stream_output.wav", "cloned.wav"):
        assert_whole_wav(tmp_path / name)
        if shutil.which("ffprobe"):
            assert ffprobe(tmp_path / name, "stream=codec_name,sample_rate,channels") == "pcm_s16le,44100,1"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_fetch_example(service: Service, tmp_path: Path) -> None:
    """The seed's fetch example: FormData, body.getReader() until done, a Blob of the chunks."""
    script = tmp_path / "fetch.mjs"
    script.write_text(
        """
const formData = new FormData();
formData.append('text', '你好，这是流式语音合成。');
formData.append('inference_timesteps', '5');
const response = await fetch('http://localhost:7861/api/tts/stream', {method: 'POST', body: formData});
const reader = response.body.getReader();
const chunks = [];
while (true) {
  const {done, value} = await reader.read();
  if (done) break;
  chunks.push(value);
}
const blob = new Blob(chunks, {type: 'audio/wav'});
const fs = await import('node:fs');
fs.writeFileSync(process.argv[2], Buffer.from(await blob.arrayBuffer()));
console.log(response.status, blob.type, blob.size);
"""
    )
    out = tmp_path / "fetched.wav"
    result = subprocess.run(["node", script, out], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split()[:2] == ["200", "audio/wav"]
    assert_whole_wav(out)


def test_first_byte_arrives_long_before_the_end(service: Service) -> None:
    """The point of streaming: report time to first byte against total time (no wall-clock assertion)."""
    text = "你好，这是VoxCPM流式语音合成测试。" * 3
    started = time.perf_counter()
    long_stream = {"text": text, "min_len": 150, "max_len": 200}  # seconds of audio, generated over many steps
    response = requests.post(f"{service.url}/api/tts/stream", data=long_stream, stream=True)
    chunks = response.iter_content(chunk_size=None)
    first = next(chunks)
    first_byte = time.perf_counter() - started
    received = len(first) + sum(len(chunk) for chunk in chunks)
    total = time.perf_counter() - started
    ratio = first_byte / total
    audio_s = (received - WAV_HEADER_BYTES) / 2 / 44100
    log.info(
        "TTFB %.1f ms, total %.1f ms, TTFB/total %.3f, audio %.2f s", first_byte * 1e3, total * 1e3, ratio, audio_s
    )
    print(f"\nstreaming: TTFB {first_byte * 1e3:.1f} ms of {total * 1e3:.1f} ms total (ratio {ratio:.3f})")
    assert ratio < 0.5, "the first byte came after half the stream: it was not streamed"
    assert audio_s > 1.0
