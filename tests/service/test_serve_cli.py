"""What `make serve` runs: `serve run` of configs/local.yaml (its own Ray cluster), then the seed's curl.

The config is used as shipped except for the port, so it does not collide with the session's service.
The hub is a closed local port (HF_ENDPOINT), as on a machine that cannot reach it: the console must say
that the service speaks noise, say when it is ready and where, and then stay quiet while idle.
"""

from __future__ import annotations

import os
import re
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

from tests.conftest import LOCAL_CONFIG, ffprobe, free_port

STARTUP_TIMEOUT_S = 240
IDLE_S = 10  # ten status reports per model replica: a periodic line would show
# Ray's own processes warn about the machine itself (a disk over 95% full, memory pressure) in glog's format,
# "[2026-11-30 06:53:10,229 E 6080 6092]": a warning the user should see, not the per-call chatter the
# console must not have.
MACHINE_WARNING = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+ [WE] \d+ \d+\]")


def wait_for_line(path: Path, text: str, timeout_s: float = 30) -> str:
    """The console so far, once it holds ``text`` (replica lines reach it through Ray's log monitor)."""
    deadline = time.monotonic() + timeout_s
    while text not in (console := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert text in console, console[-3000:]
    return console


@pytest.fixture
def served_config(tmp_path: Path) -> tuple[Path, int]:
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path, port


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_serve_run_local_config_answers_the_seed_curl(served_config: tuple[Path, int], tmp_path: Path) -> None:
    config, port = served_config
    serve = Path(sys.executable).with_name("serve")
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf")}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(serve), "run", "--address", "local", str(config)],
        cwd=tmp_path,  # where checkpoints/ (the fallback) and voices/ are written
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
        assert requests.get(f"http://localhost:{port}/health", timeout=10).json()["models"][0]["synthetic"] is True
        console = wait_for_line(tmp_path / "serve.log", "ready: playground")
        assert f"ready: playground http://localhost:{port}/ , API docs http://localhost:{port}/docs" in console
        assert "SYNTHETIC weights (speaks noise)" in console
        assert console.count("SYNTHETIC WEIGHTS: model 'voxcpm' SPEAKS NOISE.") == 2  # the banner, and its log line
        assert f"the hub at {hub} cannot be reached" in console
        idle = len(console.splitlines())
        time.sleep(IDLE_S)
        lines = [
            line
            for line in (tmp_path / "serve.log").read_text().splitlines()[idle:]
            if not MACHINE_WARNING.search(line)
        ]
        assert lines == [], f"{len(lines)} console lines in {IDLE_S} s idle: {lines[:5]}"
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
        refused = requests.post(f"http://localhost:{port}/api/tts", data={"text": "😀😀"}, timeout=60)
        assert refused.status_code == 400
        console = wait_for_line(tmp_path / "serve.log", "POST /api/tts, status 400")
        assert "POST /api/tts/stream, status 200, model voxcpm, audio" in console  # the seed's curl
        assert "Traceback" not in console  # a client's mistake is not the service's failure
    finally:
        os.killpg(process.pid, signal.SIGINT)  # `serve run` shuts Serve and its cluster down on SIGINT
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
