"""What `make serve` runs: `serve run` of configs/local.yaml (its own Ray cluster), then the seed's curl.

The config is used as shipped except for two values, so it does not collide with the session's
service: the port, and where the synthetic checkpoint is written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf
import yaml

from tests.conftest import LOCAL_CONFIG, REPO, ffprobe, free_port

STARTUP_TIMEOUT_S = 240


@pytest.fixture
def served_config(tmp_path: Path) -> tuple[Path, int]:
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"]["source"] = str(tmp_path / "checkpoint")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path, port


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_serve_run_local_config_answers_the_seed_curl(served_config: tuple[Path, int], tmp_path: Path) -> None:
    config, port = served_config
    serve = Path(sys.executable).with_name("serve")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(serve), "run", "--address", "local", str(config)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://localhost:{port}/health", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still loading
                pass
            time.sleep(1)
        else:
            pytest.fail("serve run did not become healthy:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        seed_curl = (
            f'curl -X POST http://localhost:{port}/api/tts/stream -F "text=你好世界" -F "inference_timesteps=5" '
            "--output stream_output.wav"
        )
        subprocess.run(seed_curl, shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=120)
        data, rate = sf.read(tmp_path / "stream_output.wav")
        assert rate == 44100 and len(data) > 0
        if shutil.which("ffprobe"):
            duration = float(ffprobe(tmp_path / "stream_output.wav", "format=duration"))
            assert abs(duration - len(data) / rate) < 0.01
    finally:
        os.killpg(process.pid, signal.SIGINT)  # `serve run` shuts Serve and its cluster down on SIGINT
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
