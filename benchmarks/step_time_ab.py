"""The batched engine's time per step, two source trees against each other in one run.

For a change to the engine's loop that must not slow it (the two-phase step, hidden state in slot buffers):
each tree runs in fresh processes, alternating A, B, A, B, ... (``--rounds``), so that both meet the same
machine. A process loads the tiny model (batched engine, the preset's float32, eager steps, newcomers first
as on any CPU) from one synthetic checkpoint built here, and for each level sends that many streams at once,
every one exactly ``--steps`` steps long (``min_len`` = ``max_len``: the stop head cannot end it early),
``--repeat`` times after a warm-up; a level's time per step is its wall time over ``--steps``. Reported:
each tree's median per level and B / A.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/step_time_ab.py --a /tmp/before --b . --levels 1,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEXT = "Hello there how are you doing on this fine day"  # one sentence: no sentence ends mid-request


def child(checkpoint: str, levels: list[int], steps: int, repeat: int, max_batch_size: int) -> dict[str, Any]:
    """In the tree on ``PYTHONPATH``: each level's wall times, in seconds."""
    from serve_app.config import ModelConfig
    from serve_app.model.engine_factory import load_engine
    from serve_app.model.types import SynthesisRequest

    config = ModelConfig(source=checkpoint, device="cpu", engine="batched", max_batch_size=max_batch_size)
    engine = load_engine(config)

    async def drain(request: SynthesisRequest) -> None:
        async for _ in engine.stream(request, lambda: None):
            pass

    def run(streams: int) -> float:
        requests = [
            SynthesisRequest(text=TEXT, seed=seed, min_len=steps, max_len=steps, retry_badcase=False)
            for seed in range(streams)
        ]

        async def together() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(drain(request) for request in requests))
            return time.perf_counter() - started

        return asyncio.run(together())

    walls = {}
    for streams in levels:
        run(streams)  # warm-up: this batch size's kernels built
        walls[streams] = [run(streams) for _ in range(repeat)]
    engine.close()
    return walls


def described(tree: Path) -> str:
    """The tree's commit, and whether its service code has changes of its own."""
    git = ["git", "-C", str(tree)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no", "serve_app"], capture_output=True, text=True
    )
    return f"{commit or tree}{' with changes' if dirty.stdout.strip() else ''}"


def plot(step_ms: dict[str, dict[int, float]], levels: list[int], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import png

    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    for offset, tree in ((-width / 2, "A"), (width / 2, "B")):
        positions = [index + offset for index in range(len(levels))]
        axis.bar(positions, [step_ms[tree][level] for level in levels], width, label=tree)
    axis.set_xticks(range(len(levels)), [str(level) for level in levels])
    axis.set(title="batched engine, time per step", xlabel="streams", ylabel="ms per step")
    axis.legend()
    png(figure, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, help="the tree before (a git worktree)")
    parser.add_argument("--b", type=Path, default=Path("."), help="the tree after")
    parser.add_argument("--preset", default="tiny-voxcpm1.5")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--name", default="step_time_ab")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the checkpoint, in a child process
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if args.child is not None:
        print(json.dumps(child(args.child, levels, args.steps, args.repeat, args.max_batch_size)))
        return
    from common import save, synthetic_checkpoint, table

    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    walls: dict[str, dict[int, list[float]]] = {name: {level: [] for level in levels} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = synthetic_checkpoint(args.preset, Path(tmp) / args.preset)
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                command = [sys.executable, __file__, "--child", str(checkpoint), "--levels", args.levels]
                command += ["--steps", str(args.steps), "--repeat", str(args.repeat)]
                command += ["--max-batch-size", str(args.max_batch_size)]
                environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
                output = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True, check=True)
                for level, seconds in json.loads(output.stdout.splitlines()[-1]).items():
                    walls[name][int(level)] += seconds
                print(f"round {round_ + 1}, {name}: done", flush=True)
    step_ms = {
        name: {level: 1e3 * statistics.median(w) / args.steps for level, w in by.items()} for name, by in walls.items()
    }
    rows = [
        [
            level,
            f"{step_ms['A'][level]:.2f}",
            f"{step_ms['B'][level]:.2f}",
            f"{step_ms['B'][level] / step_ms['A'][level]:.3f}",
        ]
        for level in levels
    ]
    markdown = (
        "# Time per step, two trees in one run\n\n"
        f"{args.preset} (float32, eager, CPU, OMP_NUM_THREADS=1), streams sent at once, {args.steps} steps each; "
        f"median of {args.rounds} alternating processes per tree x {args.repeat} runs; A: {described(trees['A'])}, "
        f"B: {described(trees['B'])}.\n\n" + table(["streams", "A ms/step", "B ms/step", "B / A"], rows)
    )
    print(markdown)
    plot(step_ms, levels, args.name)
    save(
        args.name,
        {"arguments": {k: str(v) for k, v in vars(args).items()}, "walls_s": walls, "step_ms": step_ms},
        markdown,
    )


if __name__ == "__main__":
    main()
