"""What the service adds to voxcpm itself: the same requests in-process and through Ray Serve HTTP.

In one run, interleaved: the engine in this process (first chunk, total, chunk cadence) and the
full path (proxy -> ingress -> handle -> model replica -> back), on the same synthetic checkpoint,
with torch on as many threads as the replica gets. Each variant of Ray Serve's data plane runs on
a fresh local cluster:

- default: Serve's proxy actor, user code and router on their own event-loop threads;
- inline-loops: RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0
  (safe here: nothing in our async code blocks; generation runs on the replica's own thread);
- haproxy: inline-loops plus RAY_SERVE_ENABLE_HA_PROXY=1 (HAProxy forwards HTTP to the ingress
  replicas directly; a feature flag in Ray 2.60).

Also voxcpm's own streaming against its non-streaming path, which explains a longer streaming total, and
the CPU each served request costs each process (Serve's proxy, the ingress, the model replica, the status board).

    .venv/bin/python benchmarks/overhead.py --repeat 20 [--variants default,haproxy]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from common import (
    DATA_PLANES,
    REPO,
    SEED_SENTENCE,
    local_service,
    save,
    summary,
    table,
    time_request,
)
from processes import cpu_seconds, cpu_seconds_since

from serve_app.config import ModelConfig
from serve_app.model.engine import joined
from serve_app.model.reference_engine import ReferenceEngine
from serve_app.model.types import SynthesisRequest

CHECKPOINT = REPO / "checkpoints" / "tiny-voxcpm1.5"
REPLICA_TORCH_THREADS = 1  # Ray sets OMP_NUM_THREADS from num_cpus (0.5 in configs/local.yaml -> 1)


def in_process(engine: ReferenceEngine, text: str) -> list[float]:
    """Arrival time of each chunk, from the call."""
    started = time.perf_counter()
    return [time.perf_counter() - started for _ in engine.generate(SynthesisRequest(text=text), streaming=True)]


def whole(engine: ReferenceEngine, text: str) -> float:
    started = time.perf_counter()
    joined(engine.generate(SynthesisRequest(text=text, retry_badcase=False), streaming=False))
    return time.perf_counter() - started


def gaps_ms(arrivals: list[float]) -> list[float]:
    return [1e3 * (b - a) for a, b in itertools.pairwise(arrivals)]


def measure(engine: ReferenceEngine, env: dict[str, str], text: str, repeat: int) -> dict[str, dict]:
    with local_service(env=env, source=str(CHECKPOINT)) as url:
        form = {"text": text, "inference_timesteps": 5}
        time_request(url, "/api/tts/stream", form)  # warm both paths
        in_process(engine, text)
        local, served, cpu_ms = [], [], {}
        for _ in range(repeat):
            local.append(in_process(engine, text))
            before = cpu_seconds()
            served.append(time_request(url, "/api/tts/stream", form))
            for name, used in cpu_seconds_since(before).items():
                if name != "clients":  # this process: the in-process runs too
                    cpu_ms[name] = cpu_ms.get(name, 0.0) + 1e3 * used / repeat
    local_ttfb = [1e3 * arrivals[0] for arrivals in local]
    served_ttfb = [1e3 * t.ttfb_s for t in served]
    local_total = [1e3 * arrivals[-1] for arrivals in local]
    served_total = [1e3 * t.total_s for t in served]
    return {
        "in-process first chunk": summary(local_ttfb),
        "served first byte": summary(served_ttfb),
        "added to first byte": summary([s - loc for s, loc in zip(served_ttfb, local_ttfb, strict=True)]),
        "in-process total": summary(local_total),
        "served total": summary(served_total),
        "added to total": summary([s - loc for s, loc in zip(served_total, local_total, strict=True)]),
        "in-process gap between chunks": summary([g for arrivals in local for g in gaps_ms(arrivals)]),
        "served gap between chunks": summary([1e3 * g for t in served for g in t.gaps_s()]),
        "cpu_ms_per_request": cpu_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--text", default=SEED_SENTENCE)
    parser.add_argument("--variants", default=",".join(DATA_PLANES))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(REPLICA_TORCH_THREADS)
    engine = ReferenceEngine.load(
        ModelConfig(source=str(CHECKPOINT), synthetic_preset="tiny-voxcpm1.5", device="cpu", optimize=False)
    )
    results = {name: measure(engine, DATA_PLANES[name], args.text, args.repeat) for name in args.variants.split(",")}
    whole_ms = [1e3 * whole(engine, args.text) for _ in range(max(3, args.repeat // 4))]
    stream_ms = [1e3 * in_process(engine, args.text)[-1] for _ in range(max(3, args.repeat // 4))]
    engine.close()
    streaming_cost = statistics.median(stream_ms) / statistics.median(whole_ms)

    rows = [
        [variant, metric, *(f"{stats[k]:.1f}" for k in ("median", "p95", "min", "max"))]
        for variant, metrics in results.items()
        for metric, stats in metrics.items()
        if metric != "cpu_ms_per_request"
    ]
    cpu_rows = [
        [variant, *(f"{name} {ms:.1f}" for name, ms in sorted(metrics["cpu_ms_per_request"].items()))]
        for variant, metrics in results.items()
    ]
    markdown = (
        "# Serving overhead\n\n"
        f"{args.repeat} interleaved runs per variant of the seed sentence, tiny synthetic model on a 2-core CPU, "
        f"torch on {REPLICA_TORCH_THREADS} thread in both places. Milliseconds.\n\n"
        + table(["variant", "measure", "p50", "p95", "min", "max"], rows)
        + "\nCPU milliseconds each served request cost each process (mean; the model replica's includes the "
        "generation itself):\n\n"
        + "\n".join(f"- {variant}: {', '.join(parts)}" for variant, *parts in cpu_rows)
        + "\n"
        + f"\nvoxcpm itself, in-process: streaming total / non-streaming total = {streaming_cost:.2f}x "
        "(streaming re-decodes a window of latent patches through the VAE at every step).\n"
    )
    save(
        "overhead",
        {
            "text": args.text,
            "repeat": args.repeat,
            "variants": results,
            "voxcpm_streaming_over_nonstreaming_total": streaming_cost,
        },
        markdown,
    )


if __name__ == "__main__":
    main()
