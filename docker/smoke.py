"""The container image end to end: build it, run it, speak through it, stop it, and write down what was seen.

    .venv/bin/python docker/smoke.py                    (make docker-smoke; many minutes, not in `make test`)
    .venv/bin/python docker/smoke.py --base-image voxcpm-serve-base:bookworm --docker /usr/bin/docker

Builds the CPU image (`make image-cpu`), checks that it refuses to start without API keys, starts it as a
user would (published port, named volumes for the model cache and the voices, an API key from the
environment), waits for Docker's health check on /ready, then checks: /ready and /health answer without a
key, speech needs one, a voice saves onto the voices volume, a chunked stream in that voice and a whole
/api/tts file each decode to the same length with soundfile and with ffprobe, `docker logs` has the
ingress's line for each request id we sent and no traceback, and `docker stop` ends the container within
its grace period with exit code 0. Exits 1 when
a check fails. Results: benchmarks/results/docker_smoke.json, .md and .log (the container's output).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NAME = "voxcpm-smoke"
API_KEY = "smoke-test-key"
REQUEST_IDS = {"stream": "smoke-stream-1", "tts": "smoke-tts-1"}  # sent as X-Request-Id, looked for in the logs
TEXT = "你好，这是容器里的语音合成。"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def build(docker: str, base_image: str) -> tuple[str, float]:
    make = ["make", "-C", str(ROOT), "image-cpu", f"DOCKER={docker}", f"CPU_BASE_IMAGE={base_image}"]
    started = time.monotonic()
    subprocess.run(make, check=True)
    seconds = time.monotonic() - started
    version = sh("sed", "-n", 's/^version = "\\(.*\\)"/\\1/p', str(ROOT / "pyproject.toml")).stdout.strip()
    return f"voxcpm-serve:{version}-cpu", seconds


def wait_healthy(docker: str, timeout_s: float) -> tuple[float, list[str]]:
    """Seconds until Docker's HEALTHCHECK (curl /ready) first passed, and the states it went through."""
    started, states = time.monotonic(), []
    while time.monotonic() - started < timeout_s:
        state = json.loads(sh(docker, "inspect", "--format", "{{json .State}}", NAME).stdout)
        health = state.get("Health", {}).get("Status", "none")
        if not states or states[-1] != health:
            states.append(health)
        if health == "healthy":
            return time.monotonic() - started, states
        if not state["Running"]:
            raise RuntimeError("the container stopped:\n" + sh(docker, "logs", NAME).stderr[-4000:])
        time.sleep(2)
    raise TimeoutError(f"not healthy after {timeout_s} s (states {states})")


def ffprobe(data: bytes, suffix: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=suffix) as file:
        file.write(data)
        file.flush()
        out = sh(
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels:format=duration",
            "-of",
            "json",
            file.name,
        ).stdout
    probed = json.loads(out)
    return {**probed["streams"][0], "duration": float(probed["format"]["duration"])}


def speak(base: str) -> dict[str, Any]:
    key = {"Authorization": f"Bearer {API_KEY}"}
    checks: dict[str, Any] = {
        "ready_without_key": requests.get(f"{base}/ready", timeout=10).status_code,
        "health_without_key": requests.get(f"{base}/health", timeout=10).status_code,
        "speech_without_key": requests.post(f"{base}/api/tts", data={"text": TEXT}, timeout=60).status_code,
    }
    reference = io.BytesIO()  # two seconds of a tone: the voices volume must take a saved voice
    sf.write(reference, 0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000), 16000, format="WAV")
    files = {"audio": ("reference.wav", reference.getvalue(), "audio/wav")}
    voice = {"text": "参考音频。", "name": "smoke"}
    saved = requests.post(f"{base}/api/voices", headers=key, files=files, data=voice, timeout=60)
    checks["voice_saved"] = saved.status_code
    started = time.monotonic()
    headers = {**key, "X-Request-Id": REQUEST_IDS["stream"]}
    form = {"text": TEXT, **({"voice_id": saved.json()["voice_id"]} if saved.status_code == 201 else {})}
    with requests.post(f"{base}/api/tts/stream", data=form, headers=headers, stream=True, timeout=300) as r:
        r.raise_for_status()
        chunks = []
        for chunk in r.iter_content(chunk_size=None):
            if not chunks:
                checks["stream_first_bytes_s"] = round(time.monotonic() - started, 3)
            chunks.append(chunk)
    stream = b"".join(chunks)
    data, rate = sf.read(io.BytesIO(stream), dtype="int16")
    checks["stream"] = {
        "chunks": len(chunks),
        "bytes": len(stream),
        "soundfile": {"rate": rate, "frames": len(data)},
        "ffprobe": ffprobe(stream, ".wav"),
        "seconds": round(time.monotonic() - started, 3),
    }
    started = time.monotonic()
    headers = {**key, "X-Request-Id": REQUEST_IDS["tts"]}
    whole = requests.post(f"{base}/api/tts", data={"text": TEXT}, headers=headers, timeout=300)
    whole.raise_for_status()
    data, rate = sf.read(io.BytesIO(whole.content), dtype="int16")
    checks["tts_wav"] = {
        "bytes": len(whole.content),
        "content_length": int(whole.headers["content-length"]),
        "soundfile": {"rate": rate, "frames": len(data)},
        "ffprobe": ffprobe(whole.content, ".wav"),
        "seconds": round(time.monotonic() - started, 3),
    }
    return checks


def without_keys(docker: str, image: str) -> dict[str, Any]:
    """The image run as `docker run IMAGE` with no key and no anonymous access asked for: it must not serve."""
    started = time.monotonic()
    refused = sh(docker, "run", "--rm", image, check=False)
    return {
        "exit_code": refused.returncode,
        "says_how": "VOXCPM_SERVE_API_KEYS" in refused.stderr and "VOXCPM_SERVE_ALLOW_ANONYMOUS" in refused.stderr,
        "seconds": round(time.monotonic() - started, 1),
    }


def stop(docker: str, grace_s: int) -> dict[str, Any]:
    started = time.monotonic()
    sh(docker, "stop", "--time", str(grace_s), NAME)
    seconds = time.monotonic() - started
    state = json.loads(sh(docker, "inspect", "--format", "{{json .State}}", NAME).stdout)
    return {
        "grace_s": grace_s,
        "seconds": round(seconds, 1),
        "exit_code": state["ExitCode"],
        "oom_killed": state["OOMKilled"],
        "within_grace": seconds < grace_s,
    }


def save_logs(docker: str) -> list[str]:
    """`docker logs` (both streams, in order) into benchmarks/results/docker_smoke.log."""
    logs = subprocess.run([docker, "logs", NAME], capture_output=True, text=True, check=False)
    text = logs.stdout + logs.stderr if logs.returncode == 0 else logs.stderr
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "docker_smoke.log").write_text(text)
    return text.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docker", default="docker", help="the Docker CLI (one with BuildKit)")
    parser.add_argument("--base-image", default="debian:bookworm-slim", help="CPU image's base (docker/local-base.sh)")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--stop-grace", type=int, default=60)
    args = parser.parse_args()
    docker = args.docker

    image, build_s = build(docker, args.base_image)
    size = int(sh(docker, "image", "inspect", "--format", "{{.Size}}", image).stdout)
    refused = without_keys(docker, image)
    sh(docker, "rm", "--force", NAME, check=False)
    sh(docker, "volume", "rm", f"{NAME}-models", f"{NAME}-voices", check=False)
    sh(
        docker,
        "run",
        "--detach",
        "--name",
        NAME,
        "--publish",
        "127.0.0.1::7861",
        "--shm-size",
        "1g",
        "--env",
        f"VOXCPM_SERVE_API_KEYS={API_KEY}",
        "--volume",
        f"{NAME}-models:/models",
        "--volume",
        f"{NAME}-voices:/var/lib/voxcpm-serve/voices",
        image,
    )
    port = sh(docker, "port", NAME, "7861/tcp").stdout.split(":")[-1].strip()
    try:
        ready_s, health_states = wait_healthy(docker, args.ready_timeout)
        checks = speak(f"http://127.0.0.1:{port}")
        stopped = stop(docker, args.stop_grace)
    finally:
        lines = save_logs(docker)
        sh(docker, "rm", "--force", NAME, check=False)
        sh(docker, "volume", "rm", f"{NAME}-models", f"{NAME}-voices", check=False)
    result = {
        "image": image,
        "base_image": args.base_image,
        "build_s": round(build_s, 1),
        "image_size_gb": round(size / 1e9, 2),
        "without_keys": refused,
        "ready_s": round(ready_s, 1),
        "health_states": health_states,
        **checks,
        "stop": stopped,
        "logs": {
            "lines": len(lines),
            "request_lines": {
                route: [line.split(" -- ", 1)[-1] for line in lines if request_id in line and "TTSIngress" in line]
                for route, request_id in REQUEST_IDS.items()
            },
            "tracebacks": sum("Traceback" in line for line in lines),
            "shutdown_seen": any("shutting down" in line for line in lines),
        },
    }
    (RESULTS / "docker_smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "docker_smoke.md").write_text(report(result))
    print(report(result))
    failed = failures(result)
    if failed:
        raise SystemExit("FAILED: " + "; ".join(failed))


def failures(r: dict[str, Any]) -> list[str]:
    """What the smoke run expects, as the failures it saw."""
    expected = {
        "no start without keys": r["without_keys"]["exit_code"] == 78 and r["without_keys"]["says_how"],
        "/ready and /health open": r["ready_without_key"] == r["health_without_key"] == 200,
        "speech needs the key": r["speech_without_key"] == 401,
        "a voice is saved": r["voice_saved"] == 201,
        "the stream decodes": r["stream"]["soundfile"]["frames"] > 0,
        "both decoders agree": all(
            abs(a["ffprobe"]["duration"] - a["soundfile"]["frames"] / a["soundfile"]["rate"]) < 0.01
            for a in (r["stream"], r["tts_wav"])
        ),
        "Content-Length is the file's": r["tts_wav"]["content_length"] == r["tts_wav"]["bytes"],
        "request ids in docker logs": all(r["logs"]["request_lines"].values()),
        "no traceback": r["logs"]["tracebacks"] == 0,
        "clean stop": r["stop"]["exit_code"] == 0 and r["stop"]["within_grace"],
    }
    return [name for name, ok in expected.items() if not ok]


def audio(entry: dict[str, Any]) -> str:
    """One decoded answer as both decoders saw it."""
    decoded, probed = entry["soundfile"], entry["ffprobe"]
    return (
        f"{entry['bytes']} bytes, soundfile: {decoded['frames']} frames at {decoded['rate']} Hz; "
        f"ffprobe: {probed['codec_name']}, {probed['duration']:.2f} s; {entry['seconds']} s in all"
    )


def report(r: dict[str, Any]) -> str:
    logs, stopped, keyless = r["logs"], r["stop"], r["without_keys"]
    refused = (
        f"exit code {keyless['exit_code']} after {keyless['seconds']} s; says how to set keys: {keyless['says_how']}"
    )
    return f"""# Container smoke run (docker/smoke.py)

Image `{r["image"]}` on `{r["base_image"]}`: built in {r["build_s"]} s, {r["image_size_gb"]} GB.
Docker's health check (GET /ready) went {" -> ".join(r["health_states"])} after {r["ready_s"]} s.

| check | seen |
|---|---|
| `docker run` without keys | {refused} |
| /ready, /health without a key | {r["ready_without_key"]}, {r["health_without_key"]} |
| /api/tts without a key | {r["speech_without_key"]} |
| POST /api/voices (onto the voices volume) | {r["voice_saved"]} |
| /api/tts/stream (wav, the saved voice) | first bytes after {r["stream_first_bytes_s"]} s, \
{r["stream"]["chunks"]} chunks, {audio(r["stream"])} |
| /api/tts (wav) | Content-Length {r["tts_wav"]["content_length"]}, {audio(r["tts_wav"])} |
| docker logs | {logs["lines"]} lines; the ingress's lines for our request ids: {logs["request_lines"]}; \
{logs["tracebacks"]} tracebacks; shutdown logged: {logs["shutdown_seen"]} |
| docker stop (SIGINT, grace {stopped["grace_s"]} s) | {stopped["seconds"]} s, exit code {stopped["exit_code"]} |
"""


if __name__ == "__main__":
    main()
