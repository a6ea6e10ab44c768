"""Crafted adapter files: what the model replica's check of each costs it in memory, against the file's size.

Each file (tests/model/test_adapter_files.py makes them: the tests' own) is made for a real model's LoRA
layout (VoxCPM2 at rank 32 by default: 320 tensors, 60.5 MiB in float32, built on the meta device, no
weights) and checked in a fresh interpreter by what ``VoxCPMDeployment.check_adapter`` runs
(``read_weights`` against the model's layout), after a check of a two-tensor adapter of each format so the
readers' lazy imports are not counted: the process's peak RSS increase (VmHWM after, less VmRSS before, the
peak reset with clear_refs; glibc's mmap threshold fixed). "Before": the same file given to what the replica
ran first before these bounds (torch.load weights-only and memory-mapped, or safetensors' header parse).

    .venv/bin/python benchmarks/adapter_refusals.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
from common import REPO, png, save, table

from serve_app.config import LoRAShape
from serve_app.model import synthetic
from serve_app.model.adapters import Layout, layout, lora_config

sys.path.insert(0, str(REPO))  # the crafted files are the tests' own
from tests.model.test_adapter_files import ACCEPTED, REFUSED, peaks

MIB = 2**20


def model_layout(preset: str, rank: int) -> Layout:
    """The model's LoRA parameters and shapes, from a model built on the meta device."""
    with tempfile.TemporaryDirectory() as directory, torch.device("meta"):
        _, model = synthetic.instantiate(preset, Path(directory))  # type: ignore[arg-type]
        model.lora_config = lora_config(LoRAShape(r=rank))
        model._apply_lora()
        return layout(model)


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [textwrap.fill(row["file"], 48) for row in rows]
    figure, axis = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.5))
    positions = range(len(rows))
    axis.barh([p - 0.2 for p in positions], [row["before_mib"] for row in rows], 0.4, label="before the bounds")
    axis.barh([p + 0.2 for p in positions], [row["check_mib"] for row in rows], 0.4, label="the check")
    axis.scatter([row["bytes"] / MIB for row in rows], positions, marker="|", color="black", s=200, label="file size")
    axis.set_yticks(list(positions), labels)
    axis.set_xscale("symlog", linthresh=1)
    axis.set(title="replica's peak RSS increase per file checked, MiB", xlabel="MiB (log above 1)")
    axis.invert_yaxis()
    axis.legend(loc="lower right")
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="voxcpm2", choices=["voxcpm1.5", "voxcpm2"])
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    expected = model_layout(args.preset, args.rank)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for index, (label, make) in enumerate({**REFUSED, **ACCEPTED}.items()):
            path = make(Path(directory) / str(index), expected)
            (check,), (before,) = peaks([path], expected), peaks([path], expected, unchecked=True)
            rows.append(
                {
                    "file": label,
                    "bytes": path.stat().st_size,
                    "outcome": check["outcome"],
                    "check_mib": check["peak_increase_mib"],
                    "before_outcome": before["outcome"],
                    "before_mib": before["peak_increase_mib"],
                }
            )
            print(rows[-1], flush=True)
            path.unlink()
    refused = [row for row in rows if row["outcome"] != "accepted"]
    worst = max(refused, key=lambda row: row["check_mib"])
    parameters = sum(torch.Size(shape).numel() for shape in expected.values())
    markdown = (
        f"# Crafted adapter files: the model replica's peak memory per check\n\n"
        f"{args.preset} at rank {args.rank}: {len(expected)} LoRA tensors, {4 * parameters / MIB:.1f} MiB in "
        "float32. Each file checked in a fresh interpreter as `VoxCPMDeployment.check_adapter` checks an upload "
        "(`read_weights`); peak: VmHWM less VmRSS before (reset with clear_refs). Before: torch.load "
        "(weights-only, memory-mapped) or safetensors' header parse, as the replica read a file first before "
        "these bounds.\n\n"
        + table(
            ["file", "bytes", "the check", "peak increase, MiB", "before: peak, MiB"],
            [
                [
                    row["file"],
                    f"{row['bytes']:,}",
                    "accepted" if row["outcome"] == "accepted" else "400 `weights`",
                    f"{row['check_mib']:.1f}",
                    f"{row['before_mib']:.1f}",
                ]
                for row in rows
            ],
        )
        + f"\nLargest increase for a refused file: {worst['check_mib']:.1f} MiB ({worst['file']}, "
        f"{worst['bytes']:,} bytes). Refusals, as answered:\n\n"
        + "".join(f"- {row['file']}: {row['outcome'].split(': ', 1)[1]}\n" for row in refused)
    )
    payload = {"preset": args.preset, "rank": args.rank, "tensors": len(expected), "parameters": parameters}
    save(f"adapter_refusals_{args.preset}", {**payload, "files": rows}, markdown)
    plot(rows, f"adapter_refusals_{args.preset}")


if __name__ == "__main__":
    main()
