"""Soak: thousands of mixed requests, watching the replicas for leaks.

A bounded run (`--requests`, default 2000) of streams, whole files, cloning uploads, OpenAI
requests, clients that hang up after the first chunk, and bad input (422/413/415/404), from a few
concurrent clients. Every `--sample-every` requests it records, for the ingress and the model
replica processes (found by their Ray process titles): resident memory, threads and open file
descriptors, plus files left in the temp directory. Flat lines mean nothing leaks.

    .venv/bin/python benchmarks/soak.py --requests 2000
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
import soundfile as sf
from common import SEED_SENTENCE, local_service, png, save, table

ROLES = {
    "ingress": ":TTSIngress",
    "model": ":VoxCPMModel",
    "runner": ":JobRunner",
}  # in the title Ray gives each replica process


def reference() -> bytes:
    buffer = io.BytesIO()
    t = np.arange(16000) / 16000
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 200 * t), 16000, format="WAV")
    return buffer.getvalue()


def requests_mix(url: str, audio: bytes) -> list:
    """The kinds of request, each a callable returning the status it got."""

    def stream() -> int:
        return requests.post(f"{url}/api/tts/stream", data={"text": SEED_SENTENCE, "max_len": 40}).status_code

    def whole() -> int:
        form = {"text": SEED_SENTENCE, "max_len": 40, "retry_badcase": "false", "format": "mp3"}
        return requests.post(f"{url}/api/tts", data=form).status_code

    def clone() -> int:
        files = {"prompt_audio": ("ref.wav", audio, "audio/wav")}
        form = {"text": SEED_SENTENCE, "prompt_text": "参考", "max_len": 30}
        return requests.post(f"{url}/api/tts/stream", data=form, files=files).status_code

    def openai() -> int:
        body = {"model": "tts-1", "input": SEED_SENTENCE, "voice": "alloy", "response_format": "opus", "max_len": 30}
        return requests.post(f"{url}/v1/audio/speech", json=body).status_code

    def hang_up() -> int:
        with requests.post(f"{url}/api/tts/stream", data={"text": SEED_SENTENCE * 8}, stream=True) as response:
            next(response.iter_content(4096))
            return 499  # closed by the client

    def out_of_range() -> int:
        return requests.post(f"{url}/api/tts/stream", data={"text": "x", "cfg_value": 99}).status_code

    def too_long() -> int:
        return requests.post(f"{url}/api/tts/stream", data={"text": "长" * 6000}).status_code

    def not_audio() -> int:
        files = {"prompt_audio": ("x.wav", b"definitely not audio" * 100, "audio/wav")}
        return requests.post(f"{url}/api/tts/stream", data={"text": "hi", "prompt_text": "x"}, files=files).status_code

    def unknown_voice() -> int:
        return requests.post(f"{url}/api/tts/stream", data={"text": "hi", "voice_id": "0" * 32}).status_code

    return [stream, stream, whole, clone, openai, hang_up, hang_up, out_of_range, too_long, not_audio, unknown_voice]


def replica_processes() -> dict[str, psutil.Process]:
    """This run's replica processes: workers of this cluster's raylet (other clusters may be running)."""
    import ray

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    found = {}
    for process in raylet.children(recursive=True):
        title = " ".join(process.cmdline())
        for role, marker in ROLES.items():
            if title.startswith("ray::ServeReplica") and marker in title:
                found[role] = process
    return found


def sample(done: int, started: float) -> dict:
    point = {"requests": done, "t_s": time.perf_counter() - started}
    processes = replica_processes()
    for role, process in processes.items():
        with process.oneshot():
            point[f"{role}_rss_mb"] = process.memory_info().rss / 2**20
            point[f"{role}_threads"] = process.num_threads()
            point[f"{role}_fds"] = process.num_fds()
    # The replicas' own temp files: reference prompts voxcpm reads from disk, deleted after each use.
    # (Uploads Starlette spools to disk are unlinked at creation: they show as open descriptors.)
    prompt_dirs = list(Path(tempfile.gettempdir()).glob(f"voxcpm-denoise-{processes['model'].pid}-*"))
    point["prompt_temp_files"] = sum(1 for directory in prompt_dirs for _ in directory.iterdir())
    return point


def report(points: list[dict], statuses: Counter, wall: float) -> str:
    first, last = points[1], points[-1]  # points[0] is before any request (lazy imports come with the first)
    rows = [
        [key, f"{first[key]:.1f}", f"{last[key]:.1f}", f"{last[key] - first[key]:+.1f}"]
        for key in sorted(first)
        if key not in ("requests", "t_s")
    ]
    return (
        f"# Soak: {last['requests']} mixed requests in {wall:.0f} s\n\n"
        "Streams, whole files (mp3), cloning uploads, OpenAI (opus), hang-ups after the first chunk and bad "
        "input, from 4 clients; tiny synthetic model on a 2-core CPU. Growth is measured from the first "
        f"sample after {first['requests']} requests (warm) to the last.\n\n"
        + table(["measure", "after warm-up", "at the end", "growth"], rows)
        + "\nAnswers: "
        + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        + " (499: the client hung up on purpose).\n"
    )


def plot(points: list[dict], name: str = "soak", what: str = "requests") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["requests"] for p in points]
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for role in ROLES:
        axes[0].plot(x, [p.get(f"{role}_rss_mb", np.nan) for p in points], label=role)
        axes[1].plot(x, [p.get(f"{role}_threads", np.nan) for p in points], label=role)
        axes[2].plot(x, [p.get(f"{role}_fds", np.nan) for p in points], label=role)
    for axis, title in zip(axes, ("resident memory, MiB", "threads", "open file descriptors"), strict=True):
        axis.set(title=title, xlabel=what, ylim=(0, None))
        axis.legend()
    figure.suptitle(f"Soak: replica processes over {what}", y=1.04)
    png(figure, name)


def drive(
    kinds: Iterator[Callable[[], object]], total: int, clients: int, sample_every: int, counted: type[BaseException]
) -> tuple[Counter, list[dict], float]:
    """``total`` calls of the kinds in turn from ``clients`` threads, sampling the replicas every ``sample_every``
    calls: what each call returned (or the name of the ``counted`` exception it raised), the samples, the wall time."""
    outcomes: Counter = Counter()
    points, lock, done = [sample(0, time.perf_counter())], threading.Lock(), 0
    started = time.perf_counter()

    def client() -> None:
        nonlocal done
        while True:
            with lock:
                if done >= total:
                    return
                done += 1
                kind, number = next(kinds), done
            try:
                outcome = kind()
            except counted as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] += 1
                if number % sample_every == 0:
                    points.append(sample(number, started))

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - started
    time.sleep(2)
    points.append(sample(done, started))
    return outcomes, points, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-every", type=int, default=100)
    args = parser.parse_args()
    with local_service() as url:
        kinds = itertools.cycle(requests_mix(url, reference()))
        statuses, points, wall = drive(kinds, args.requests, args.clients, args.sample_every, requests.RequestException)
    save(
        "soak", {"points": points, "statuses": {str(k): v for k, v in statuses.items()}}, report(points, statuses, wall)
    )
    plot(points)


if __name__ == "__main__":
    main()
