"""Which VoxCPM release suits a CPU: the full-size synthetic presets (the releases' published dimensions,
random weights, loaded through voxcpm's own code) streaming a few seconds of audio on this machine.

The computation per step is the release's, so time to first chunk, real-time factor and memory are
what the release would cost here; the sound is not. Used to choose configs/local.yaml's `source`.

    PYTHONPATH=. python benchmarks/cpu_release.py voxcpm-0.5b:50 voxcpm1.5:25   # preset:steps (~4 s each)
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from common import synthetic_checkpoint

from serve_app.config import ModelConfig
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import SynthesisRequest

TEXT = "Hello, this is a test of the speech service."
RESULTS = Path(__file__).resolve().parent / "results"


def measure(preset: str, steps: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = synthetic_checkpoint(preset, Path(tmp) / preset)
        size = sum(file.stat().st_size for file in checkpoint.rglob("*") if file.is_file())
        started = time.perf_counter()
        config = ModelConfig(source=str(checkpoint), device="cpu", optimize=False, warmup=False)
        engine = ReferenceEngine.load(config)
        load_s = time.perf_counter() - started
        timings = []
        for _ in range(runs):
            started, first, samples = time.perf_counter(), None, 0
            request = SynthesisRequest(text=TEXT, max_len=steps, inference_timesteps=5)
            for chunk in engine.generate(request, streaming=True):
                first = first or time.perf_counter() - started
                samples += len(chunk)
            total, audio = time.perf_counter() - started, samples / engine.info.sample_rate
            timings.append({"first_chunk_s": first, "total_s": total, "audio_s": audio, "rtf": total / audio})
        engine.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"preset": preset, "checkpoint_bytes": size, "load_s": load_s, "runs": timings, "max_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+", help="preset:steps")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_release.json")
    args = parser.parse_args()
    results = []
    for item in args.presets:
        preset, steps = item.split(":")
        results.append(measure(preset, int(steps), args.runs))
        print(json.dumps(results[-1]), flush=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
