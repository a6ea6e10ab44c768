"""Reference uploads: what each one costs the ingress in memory and time, against the bound it is under.

Each crafted upload (made as tests/audio/test_decode.py makes them) is sent as prompt_audio to
/api/tts/stream of the local service, `--repeat` times after one unrecorded round. Per request:
the status, the time to the answer's status line, and the ingress replica's peak RSS increase: its
process's peak is reset (`echo 5 > /proc/PID/clear_refs`), the answer read whole, then VmHWM less
the VmRSS it had before. The cluster runs with MALLOC_MMAP_THRESHOLD_ fixed (glibc otherwise raises
it as large blocks are freed and keeps them in its heaps), so what one upload frees is returned
before the next and each peak is that upload's own.

The worst case per upload is computed from the limits in configs/local.yaml and compared. A 200's
time includes a 4-step synthesis; the prompts repeat, so after the first round the model replica's
prompt cache spares it encoding them again.

    .venv/bin/python benchmarks/upload_memory.py --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml
from common import LOCAL_CONFIG, REPO, local_service, png, save, table

from serve_app.audio.decode import BLOCK_FRAMES
from serve_app.config import LimitsConfig

sys.path.insert(0, str(REPO))  # the crafted uploads are the tests' own
from tests.audio.test_decode import BOMB_RATE, bomb, matroska_pcm, streamed, wav_claiming, written

MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # glibc's default, kept from moving
FFMPEG_PROBE_BYTES = 5_000_000  # what FFmpeg reads ahead to find the streams (its default probesize)
MIB = 2**20
FORM = {"text": "你好", "prompt_text": "参考", "max_len": 4, "inference_timesteps": 2}

UPLOADS: dict[str, Callable[[], bytes]] = {
    "ordinary: 10 s mono 16 kHz WAV": lambda: written(10 * 16000, 16000, 1, "WAV"),
    "largest ordinary: 60 s stereo 48 kHz WAV": lambda: written(60 * 48000, 48000, 2, "WAV"),
    "budget-sized: 60 s mono 96 kHz 24-bit WAV": lambda: written(60 * 96000, 96000, 1, "WAV", "PCM_24"),
    "budget-sized through FFmpeg: 60 s mono 96 kHz PCM in Matroska": lambda: matroska_pcm(60 * 96000, 96000, 4096),
    "bomb: 7.1 at 655,340 Hz FLAC, 20 s": lambda: bomb(20),
    "bomb: 7.1 at 655,340 Hz FLAC, 60 s": lambda: bomb(60),
    "header without a length: FLAC, 8 ch 192 kHz 50 s": lambda: streamed(written(50 * 192_000, 192_000, 8)),
    "streaming WAV header (0xFFFFFFFF): 8 ch 48 kHz 20 s": lambda: wav_claiming(
        written(20 * 48000, 48000, 8, "WAV"), 0xFFFFFFFF
    ),
    "tiny frames: 200,000 one-sample FFmpeg frames": lambda: matroska_pcm(200_000),
    "tiny frames: 2,500,000 one-sample FFmpeg frames (20 MB)": lambda: matroska_pcm(2_500_000),
}


def ingress_pid() -> int:
    """The TTSIngress replica's process: Ray titles an actor's process after its class."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::ServeReplica:voxcpm:TTSIngress"):
                return int(entry.name)
    raise RuntimeError("no TTSIngress replica process")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def send(url: str, pid: int, data: bytes) -> dict:
    """One upload: its status, seconds to the status line, and the ingress's peak RSS increase (MiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_kib(pid, "VmRSS")
    started = time.perf_counter()
    with requests.post(
        f"{url}/api/tts/stream", data=FORM, files={"prompt_audio": ("upload", data)}, stream=True, timeout=600
    ) as response:
        answered_s = time.perf_counter() - started
        body = response.content
    error = response.json()["error"]["message"] if response.status_code != 200 else ""
    assert response.status_code != 200 or body[:4] == b"RIFF", body[:200]
    return {
        "status": response.status_code,
        "answered_s": answered_s,
        "peak_increase_mib": (status_kib(pid, "VmHWM") - before) / 1024,
        "rss_before_mib": before / 1024,
        "error": error,
    }


def worst_case(limits: LimitsConfig, prompt_rate: int) -> dict[str, dict[str, float]]:
    """What one upload may make the ingress hold at once (MiB), phase by phase, from the bounds: the
    upload is held throughout; the rest of each phase is freed before the next."""
    upload, mono = limits.max_prompt_audio_bytes, 4 * limits.prompt_audio_sample_budget
    resampled = 4 * limits.max_prompt_audio_seconds * prompt_rate
    held = "the upload, as read"
    phases = {
        "receiving the form": {held: upload, "the body's chunks, up to the upload (not yet returned)": upload},
        "libsndfile trying the formats it knows": {held: upload, "its read buffer, up to the upload": upload},
        "decoding with libsndfile, then resampling": {
            held: upload,
            "the mono float32 buffer, up to the budget": mono,
            "a block of 8 channels and its mono mix": 4 * BLOCK_FRAMES * (limits.max_prompt_audio_channels + 1),
            f"the resampled copy at {prompt_rate} Hz": resampled,
        },
        "decoding with FFmpeg, then resampling": {
            held: upload,
            "the mono float32 buffer, up to the budget": mono,
            "its previous capacity, while it grows (when realloc copies)": mono,
            "FFmpeg's probe read-ahead": FFMPEG_PROBE_BYTES,
            f"the resampled copy at {prompt_rate} Hz": resampled,
        },
        "sending the request to the model": {
            held: upload,
            "the resampled samples and their serialized copy": 2 * resampled,
        },
    }
    return {phase: {part: size / MIB for part, size in parts.items()} for phase, parts in phases.items()}


def plot(rows: list[dict], bound_mib: float, libsndfile_bound_mib: float, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [textwrap.fill(f"{row['upload']} ({row['status']})", 44) for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(14, 7))
    axes[0].barh(labels, [row["peak_increase_mib"]["max"] for row in rows])
    axes[0].axvline(bound_mib, color="red", linestyle="--", label=f"worst case, FFmpeg: {bound_mib:.0f} MiB")
    axes[0].axvline(
        libsndfile_bound_mib, color="orange", linestyle=":", label=f"libsndfile: {libsndfile_bound_mib:.0f}"
    )
    axes[0].set(title="ingress peak RSS increase per upload, MiB (max of runs)")
    axes[0].invert_yaxis()
    axes[0].legend(loc="upper right")
    axes[1].barh(labels, [row["answered_s"]["median"] for row in rows])
    axes[1].set(title="time to the answer's status line, s (median)")
    axes[1].invert_yaxis()
    axes[1].tick_params(labelleft=False)
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limits = LimitsConfig(**yaml.safe_load(LOCAL_CONFIG.read_text())["applications"][0]["args"]["limits"])
    uploads = {name: make() for name, make in UPLOADS.items()}
    runs: dict[str, list[dict]] = {name: [] for name in uploads}
    with local_service(env=MALLOC) as url:
        prompt_rate = requests.get(f"{url}/health", timeout=60).json()["models"][0]["prompt_sample_rate"]
        pid = ingress_pid()
        for round_ in range(args.repeat + 1):
            for name, data in uploads.items():
                run = send(url, pid, data)
                print(f"{name}: {run}")
                if round_:  # the first round warms the path up (imports, first allocations)
                    runs[name].append(run)
    phases = worst_case(limits, prompt_rate)
    totals = {phase: sum(parts.values()) for phase, parts in phases.items()}
    bound_mib = max(totals.values())
    libsndfile_mib = totals["decoding with libsndfile, then resampling"]
    rows = [
        {
            "upload": name,
            "bytes": len(uploads[name]),
            "status": statistics.mode(run["status"] for run in runs[name]),
            "statuses": [run["status"] for run in runs[name]],
            "answered_s": {"median": statistics.median(run["answered_s"] for run in runs[name])},
            "peak_increase_mib": {
                "median": statistics.median(run["peak_increase_mib"] for run in runs[name]),
                "max": max(run["peak_increase_mib"] for run in runs[name]),
            },
            "error": runs[name][-1]["error"],
        }
        for name in uploads
    ]
    markdown = (
        "# Reference uploads: ingress memory and time per upload\n\n"
        f"Each upload sent {args.repeat} times as prompt_audio to /api/tts/stream (after one unrecorded round), "
        "tiny synthetic model on CPU, one ingress replica. Peak: the ingress process's VmHWM less its VmRSS "
        f"before the request (peak reset with clear_refs; glibc's {', '.join(MALLOC)} fixed so freed memory "
        "is returned between uploads).\n\n"
        + table(
            ["upload", "bytes", "status", "answered in, s (median)", "peak RSS increase, MiB (median / max)"],
            [
                [
                    row["upload"],
                    f"{row['bytes']:,}",
                    row["status"],
                    f"{row['answered_s']['median']:.2f}",
                    f"{row['peak_increase_mib']['median']:.1f} / {row['peak_increase_mib']['max']:.1f}",
                ]
                for row in rows
            ],
        )
        + "\nRefusals, as answered:\n\n"
        + "".join(f"- {row['upload']}: {row['status']} {row['error']}\n" for row in rows if row["error"])
        + f"\nWorst case per upload, from the limits (budget {limits.prompt_audio_sample_budget:,} samples, "
        f"model prompt rate {prompt_rate} Hz), by phase:\n\n"
        + table(
            ["phase", "held at once", "MiB"],
            [[phase, " + ".join(parts), f"{totals[phase]:.1f}"] for phase, parts in phases.items()],
        )
        + f"\nWorst: {bound_mib:.1f} MiB (through FFmpeg), {libsndfile_mib:.1f} MiB through libsndfile; the request's "
        "own memory (its form, the synthesis) comes on top. Largest measured: "
        f"{max(row['peak_increase_mib']['max'] for row in rows):.1f} MiB.\n"
    )
    payload = {
        "repeat": args.repeat,
        "limits": limits.model_dump(),
        "sample_budget": limits.prompt_audio_sample_budget,
        "bomb_rate": BOMB_RATE,
        "prompt_sample_rate": prompt_rate,
        "worst_case_mib": {"phases": phases, "totals": totals, "worst": bound_mib},
        "uploads": rows,
        "runs": runs,
    }
    save("upload_memory", payload, markdown)
    plot(rows, bound_mib, libsndfile_mib, "upload_memory")


if __name__ == "__main__":
    main()
