"""What `speed` costs: the time-stretcher alone, and what it adds to a stream through the service.

1. The stretcher (serve_app/audio/stretch.py) on a voiced test signal fed in 33 ms chunks, as the
   ingress feeds it: CPU per audio second, how much input it holds before its first output, and
   whether pitch and length come out right. audiotsm is measured beside it where it is installed
   (not a dependency of the service; ``--libraries-only`` runs just this part, e.g. in a scratch
   environment with ``pip install pylibrb audiotsm numpy``, saved as stretch_libraries).
2. The service (configs/local.yaml, tiny synthetic model on CPU): time to first audio byte and the
   ingress's CPU per audio second for ``/api/tts/stream`` at speed 1.0 and others, interleaved.

    unshare -n bash -c 'ip link set lo up && .venv/bin/python benchmarks/stretch.py --repeat 8'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import SEED_SENTENCE, local_service, save, summary, table, time_request

from serve_app.audio.stretch import stretcher

CHUNK_S = 1470 / 44100  # one generation step of VoxCPM1.5
SPEEDS = (0.5, 0.8, 1.25, 1.5, 2.0)


def voiced(rate: int, seconds: float = 4.0, f0: float = 150.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(
        (0.6 / k) * np.sin(2 * np.pi * k * f0 * t) * np.exp(-(((k * f0 - 700) / 900) ** 2)) for k in range(1, 30)
    )
    return (0.4 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(np.float32)


def fundamental_and_hnr(signal: np.ndarray, rate: int) -> tuple[float, float]:
    """The strongest partial under 400 Hz, and harmonic-to-noise ratio below 4 kHz (dB): smeared
    harmonics (a rough, phasey voice) lower it."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    band = (freqs > 80) & (freqs < 400)
    f0 = float(freqs[band][spectrum[band].argmax()])
    harmonic = np.zeros_like(freqs, dtype=bool)
    for k in range(1, 26):
        harmonic |= np.abs(freqs - k * f0) < 6
    below = freqs < 4000
    return f0, float(10 * np.log10(spectrum[harmonic & below].sum() / spectrum[~harmonic & below].sum()))


Stage = Callable[[np.ndarray], np.ndarray]


def ours(speed: float, rate: int) -> tuple[Stage, Callable[[], np.ndarray]]:
    stage = stretcher(speed, rate)
    return stage.feed, stage.finish


def audiotsm_wsola(speed: float, rate: int) -> tuple[Stage, Callable[[], np.ndarray]]:
    import audiotsm
    from audiotsm.io.array import ArrayReader, ArrayWriter

    tsm = audiotsm.wsola(1, speed=speed)

    def feed(chunk: np.ndarray) -> np.ndarray:
        writer = ArrayWriter(1)
        tsm.run(ArrayReader(chunk[None, :]), writer, flush=False)
        return writer.data[0].astype(np.float32)

    def finish() -> np.ndarray:
        writer = ArrayWriter(1)
        tsm.flush_to(writer)
        return writer.data[0].astype(np.float32)

    return feed, finish


CANDIDATES = {"rubberband R3 short window (ours)": ours, "audiotsm WSOLA": audiotsm_wsola}


def measure_stage(make: Callable, speed: float, rate: int) -> dict:
    signal, chunk = voiced(rate), round(CHUNK_S * rate)
    feed, finish = make(speed, rate)
    pieces, held_s = [], None
    started = time.process_time()
    for start in range(0, len(signal), chunk):
        pieces.append(feed(signal[start : start + chunk]))
        if held_s is None and len(pieces[-1]):
            held_s = (start + chunk) / rate
    pieces.append(finish())
    cpu = time.process_time() - started
    out = np.concatenate(pieces)
    f0, hnr = fundamental_and_hnr(out[len(out) // 8 : len(out) // 8 + 2 * rate], rate)
    return {
        "cpu_ms_per_audio_s": 1e3 * cpu / (len(out) / rate),
        "input_before_first_output_ms": 1e3 * (held_s or 0.0),
        "length_error": len(out) * speed / len(signal) - 1,
        "f0_hz": f0,
        "hnr_db": hnr,
    }


def stretcher_alone() -> dict:
    results = {}
    source_f0, source_hnr = fundamental_and_hnr(voiced(44100)[: 2 * 44100], 44100)
    for name, make in CANDIDATES.items():
        try:
            make(1.5, 44100)
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        for rate in (44100, 48000, 16000) if make is ours else (44100,):
            for speed in SPEEDS:
                results[f"{name}, {rate} Hz, {speed}x"] = measure_stage(make, speed, rate)
    return {"source": {"f0_hz": source_f0, "hnr_db": source_hnr}, "stages": results}


def ingress_cpu_seconds() -> Callable[[], float]:
    """CPU seconds used so far by this cluster's ingress replica: the one among this process's
    descendants (Ray starts the cluster's processes under the driver; other clusters on the machine
    run processes of the same name)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])

    def mine(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    (ingress,) = [pid for pid in parents if mine(pid) and b"TTSIngress" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    stat, ticks = Path(f"/proc/{ingress}/stat"), os.sysconf("SC_CLK_TCK")

    def used() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    return used


def through_the_service(repeat: int, speeds: list[float]) -> dict:
    form = {"text": SEED_SENTENCE * 2, "inference_timesteps": 5}
    runs: dict[float, list] = {speed: [] for speed in speeds}
    cpu: dict[float, float] = dict.fromkeys(speeds, 0.0)
    with local_service() as url:
        time_request(url, "/api/tts/stream", form)  # warm the path
        ingress_cpu = ingress_cpu_seconds()
        for _ in range(repeat):
            for speed in speeds:  # interleaved: drift on a shared machine hits every variant alike
                before = ingress_cpu()
                runs[speed].append(time_request(url, "/api/tts/stream", {**form, "speed": speed}))
                cpu[speed] += ingress_cpu() - before
    return {
        str(speed): {
            "ttfb_ms": summary([1e3 * r.ttfb_s for r in timings]),
            "audio_s": summary([r.audio_s for r in timings]),
            "ingress_cpu_ms_per_audio_s": 1e3 * cpu[speed] / sum(r.audio_s for r in timings),
        }
        for speed, timings in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 1.5, 0.75])
    parser.add_argument(
        "--libraries-only",
        action="store_true",
        help="only the stretchers, saved as stretch_libraries (run where the other libraries are installed)",
    )
    args = parser.parse_args()
    alone = stretcher_alone()
    stage_rows = [
        [
            name,
            f"{r['cpu_ms_per_audio_s']:.1f}",
            f"{r['input_before_first_output_ms']:.0f}",
            f"{100 * r['length_error']:+.1f}%",
            f"{r['f0_hz']:.0f}",
            f"{r['hnr_db']:.0f}",
        ]
        for name, r in alone["stages"].items()
    ]
    alone_md = (
        f"## The stretcher alone\n\nA voiced test signal (f0 {alone['source']['f0_hz']:.0f} Hz, "
        f"HNR {alone['source']['hnr_db']:.0f} dB) fed in 33 ms chunks; one core.\n\n"
        + table(
            ["stage", "CPU ms / audio s", "input held before first output, ms", "length", "f0 Hz", "HNR dB"], stage_rows
        )
    )
    if args.libraries_only:
        save("stretch_libraries", {"stretcher": alone}, "# speed: time-stretch libraries compared\n\n" + alone_md)
        return
    service = through_the_service(args.repeat, args.speeds)
    base = service[str(args.speeds[0])]
    service_rows = [
        [
            f"{speed}x",
            f"{r['ttfb_ms']['median']:.0f}",
            f"{r['ttfb_ms']['median'] - base['ttfb_ms']['median']:+.0f}",
            f"{r['audio_s']['median']:.2f}",
            f"{r['ingress_cpu_ms_per_audio_s']:.1f}",
        ]
        for speed, r in service.items()
    ]
    markdown = (
        "# speed: the time-stretcher's cost\n\n"
        + alone_md
        + f"\n## Through the service\n\n{args.repeat} interleaved `/api/tts/stream` requests per speed, two seed "
        "sentences, tiny synthetic VoxCPM1.5 on CPU (2 shared cores: compare the rows, not absolute values).\n\n"
        + table(["speed", "TTFB ms p50", "vs 1.0", "audio s", "ingress CPU ms / audio s"], service_rows)
    )
    save("stretch", {"repeat": args.repeat, "stretcher": alone, "service": service}, markdown)


if __name__ == "__main__":
    main()
