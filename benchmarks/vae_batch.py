"""One batched VAE decode of a step's new patches on CPU: its pointwise convolutions as one GEMM per row
(what ``vae.py`` does) against handing them to oneDNN (what PyTorch picks for more than one row).

For each VAE (the tiny presets the tests and CPU benchmarks use, and full-size releases with random
weights), ms per decode call of one patch per row at several row counts, interleaved repetitions
(medians), and the largest sample difference between the two ways at each row count (at one row both are
the same kernel). In-process, on one torch thread pool (``model_thread.py``), no Ray.

    .venv/bin/python benchmarks/vae_batch.py --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from common import save, table

from serve_app.model import synthetic
from serve_app.model.vae import StreamingVAEDecoder, fuse_weight_norm

ROWS = {"tiny-voxcpm1.5": (1, 8, 32), "tiny-voxcpm2": (1, 8, 32), "voxcpm1.5": (1, 8), "voxcpm2": (1, 8)}
WAYS = ("oneDNN", "per-row GEMM")


def measure(preset: str, rows: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    vae = synthetic.audio_vae(preset)
    fuse_weight_norm(vae)
    patch = torch.randn(max(rows), vae.latent_dim, synthetic.PRESETS[preset].patch_size) * 0.5
    decoders = {way: StreamingVAEDecoder(vae, max(rows)) for way in WAYS}
    decoders["oneDNN"].pointwise = []  # PyTorch's own choice of kernel for the 1x1 convolutions
    repeat = repeat if preset.startswith("tiny") else max(3, repeat // 10)
    results = []
    for count in rows:
        slots = list(range(count))
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        audio = {way: decoder.decode(patch[:count], slots) for way, decoder in decoders.items()}  # kernels built
        for _ in range(repeat):
            for way, decoder in decoders.items():
                started = time.perf_counter()
                decoder.decode(patch[:count], slots)
                times[way].append(time.perf_counter() - started)
        ms = {way: statistics.median(values) * 1000 for way, values in times.items()}
        difference = float((audio["oneDNN"] - audio["per-row GEMM"]).abs().max())
        results.append({"preset": preset, "rows": count, "ms_per_call": ms, "max_abs_difference": difference})
        print(preset, count, "rows:", {way: f"{value:.2f} ms" for way, value in ms.items()}, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with ThreadPoolExecutor(max_workers=1) as thread:  # torch on one thread only (model_thread.py)
        measured = [thread.submit(measure, preset, rows, args.repeat).result() for preset, rows in ROWS.items()]
    results = [row for rows in measured for row in rows]
    markdown = (
        "# One batched VAE decode: pointwise convolutions per row or through oneDNN (in-process, CPU)\n\n"
        f"One patch per row, {torch.get_num_threads()} torch threads, medians of {args.repeat} interleaved "
        "repetitions (a tenth of them, at least 3, for the full-size VAEs, random weights).\n\n"
        + table(
            ["VAE", "rows", "oneDNN ms", "per-row GEMM ms", "per-row vs oneDNN", "max |difference|"],
            [
                [
                    result["preset"],
                    result["rows"],
                    *(f"{result['ms_per_call'][way]:.2f}" for way in WAYS),
                    f"x{result['ms_per_call']['per-row GEMM'] / result['ms_per_call']['oneDNN']:.2f}",
                    f"{result['max_abs_difference']:.1e}",
                ]
                for result in results
            ],
        )
    )
    save("vae_batch", {"repeat": args.repeat, "results": results}, markdown)


if __name__ == "__main__":
    main()
