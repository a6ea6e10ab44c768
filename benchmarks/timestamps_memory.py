"""What one POST /api/tts/with-timestamps answer costs the ingress in memory, by seconds of audio.

The route holds its whole answer (to send it base64 in JSON), so its memory grows with the audio; it is
bounded by `limits.max_timestamped_audio_s`. Each case runs in a fresh process: the route's own code
(`audio_output.whole_timed` over a model stream of 1-second chunks at 48 kHz, VoxCPM2's rate, then
`timestamps.json_with_audio`), fed by a model-free stand-in for the model client, and its peak RSS
increase over the process before the answer is built. `serialized` builds the same answer as a dict whose
base64 string FastAPI's JSONResponse serializes (how the route built it before), for comparison.

    .venv/bin/python benchmarks/timestamps_memory.py --seconds 60 300 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import REPO, save, table

MODEL_RATE = 48000
CASE = r"""
import asyncio, json, resource, sys
import numpy as np
from serve_app.audio.codecs import AudioFormat
from serve_app.ingress import audio_output
from serve_app.ingress.timestamps import SegmentClock, json_with_audio
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo, SegmentEnd, SynthesisRequest
from starlette.responses import JSONResponse
import base64

seconds, fmt, rate, way = float(sys.argv[1]), AudioFormat(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MODEL_RATE = 48000

class Model:  # the model client's part the route uses: a stream of chunks, then where the sentence ends
    async def chunks(self, request, model, trace, speed, by_sentence):
        async def stream():
            noise = np.random.default_rng(0)
            for _ in range(int(seconds)):
                yield (0.1 * noise.standard_normal(MODEL_RATE)).astype(np.float32)
            yield SegmentEnd(0, "text", int(seconds) * MODEL_RATE)
        return stream()

info = ModelInfo("m", "stand-in", "voxcpm2", MODEL_RATE, 16000, "cpu", False)
output = audio_output.Output(fmt, rate, info, RequestTrace(request_id="", route="/"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def answer():
    clock = SegmentClock(None, "segment", MODEL_RATE)
    audio, segments = await audio_output.whole_timed(Model(), SynthesisRequest(text="x"), output, clock, 1e9)
    described = {"format": fmt.value, "sample_rate": rate, "segments": [s.bounds_public() for s in segments]}
    if way == "spliced":
        return json_with_audio(audio, described)
    return JSONResponse({"audio_base64": base64.b64encode(audio).decode(), **described}).body

body = asyncio.run(answer())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (peak - before) / 1024, "body_mib": len(body) / 2**20}))
"""


def measure(seconds: float, fmt: str, rate: int, way: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CASE, str(seconds), fmt, str(rate), way],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[60, 300, 600])
    args = parser.parse_args()
    cases = [("wav", 96000), ("wav", MODEL_RATE), ("mp3", MODEL_RATE)]
    rows, results = [], []
    for seconds in args.seconds:
        for fmt, rate in cases:
            measured = {way: measure(seconds, fmt, rate, way) for way in ("spliced", "serialized")}
            result = {"seconds": seconds, "format": fmt, "sample_rate": rate, **measured}
            results.append(result)
            spliced, serialized = measured["spliced"], measured["serialized"]
            rows.append(
                [
                    f"{seconds:g}",
                    f"{fmt} {rate // 1000} kHz",
                    f"{spliced['body_mib']:.1f}",
                    f"{spliced['peak_mib']:.0f}",
                    f"{serialized['peak_mib']:.0f}",
                    f"{spliced['peak_mib'] / seconds * 60:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    header = ["audio, s", "answer", "JSON body, MiB", "peak, MiB", "peak serialized, MiB", "MiB per min"]
    markdown = (
        "# /api/tts/with-timestamps: the ingress's memory per answer\n\n"
        "Peak RSS increase of one answer built by the route's code in a fresh process (model stream of 1 s chunks "
        f"at {MODEL_RATE} Hz): the base64 spliced into the JSON, and serialized with the rest as a dict.\n\n"
        + table(header, rows)
        + "\n\nReproduce: `.venv/bin/python benchmarks/timestamps_memory.py --seconds "
        + " ".join(f"{s:g}" for s in args.seconds)
        + "`\n"
    )
    save("timestamps_memory", {"model_rate": MODEL_RATE, "results": results}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
