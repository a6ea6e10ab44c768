"""CUDA graphs guarded: captured at a replica's start, then trusted only once they give the eager step's numbers.

A graph replays the kernels its capture recorded; nothing at capture time says that what it replays is the step
the engine would have run (a lazily built kernel, a host-side branch or a copy left out of the capture would
show only as wrong audio). So after the capture one step of the whole batch, and one VAE decode of every
stream, run both ways on the same random inputs, before any request: bit-equal where the engine is exact
(``batch_invariant``), else within the engine's tolerance. A mismatch, like a failed capture, leaves every
step eager, with one warning; the state (``graphs``: "on", or "off: <reason>") goes to /health and a metric.

Neither run disturbs a request: at start no slot holds one. The two decode steps write the same keys and
values at the same positions (each run attends over what it wrote itself, the rest masked), and the VAE's
per-slot states are reset before each decode and after the last.
"""

from __future__ import annotations

import logging

import torch

from serve_app.model.batched.runner import GRAPH_SPAN_STEP, StepRunner
from serve_app.model.vae import StreamingVAEDecoder

logger = logging.getLogger(__name__)

# The engine's tolerance where it is not exact: the largest difference of an audio sample (float32) allowed
# against the reference; the largest seen was ~2e-4 (docs/engines.md). The tests compare with it too.
FLOAT32_TOLERANCE = 1e-3

ON = "on"
NOT_ASKED, NO_GPU, CAPTURE_FAILED, MISMATCH = "not asked for", "no GPU", "capture failed", "mismatch"


def off(reason: str) -> str:
    return f"off: {reason}"


def uncaptured(asked: bool, cuda: bool) -> str:
    """The state before any capture: why there are no graphs (asked for on CUDA: none captured yet, which
    ``guarded`` then settles)."""
    return off(NO_GPU if asked and not cuda else NOT_ASKED if not asked else CAPTURE_FAILED)


def guarded(
    runner: StepRunner, decoder: StreamingVAEDecoder, timesteps: int, frames: int, exact: bool, capture: bool = True
) -> str:
    """Graphs of the decode step (rows with ``timesteps``) and of the VAE decode (``frames``) captured and
    checked against eager runs: "on", or "off: <reason>" with both parts eager. ``capture`` False (CPU) is the
    tests' emulation: the graphs' buffers and padding, computed eagerly."""
    try:
        runner.use_graphs(timesteps, capture)
        decoder.use_graphs(frames, capture)
        device = runner.base_kv.cache.device
        latents = torch.randn(runner.slots, runner.model.feat_dim, frames, generator=_random(device), device=device)
        differences = {
            "decode step": step_difference(runner, timesteps),
            "VAE decode": decode_difference(decoder, latents),
        }
    except Exception:  # slower, not broken
        logger.warning("CUDA graphs could not be captured: every step runs eagerly", exc_info=True)
        return _eager(runner, decoder, CAPTURE_FAILED)
    allowed = 0.0 if exact else FLOAT32_TOLERANCE
    if (worst := max(differences.values())) > allowed:
        logger.warning(
            "CUDA GRAPHS DISAGREE WITH THE EAGER STEP: every step runs eagerly (largest difference %s, allowed %s; %s)",
            worst,
            allowed,
            ", ".join(f"{part}: {difference:.3g}" for part, difference in differences.items()),
        )
        return _eager(runner, decoder, MISMATCH)
    logger.info("CUDA graphs agree with the eager step (largest difference %s): on", worst)
    return ON


@torch.inference_mode()
def step_difference(runner: StepRunner, timesteps: int) -> float:
    """The largest difference between a decode step of every slot computed eagerly and replayed from its graph."""
    assert runner.graphs is not None
    rows = runner.graphs.sizes[-1]
    inputs, random = runner.blank(rows), _random(runner.base_kv.cache.device)
    for tensor in (inputs.lm_hidden, inputs.residual_hidden, inputs.condition, inputs.noise):
        tensor.normal_(generator=random)
    inputs.cfg.fill_(2.0)
    inputs.positions.copy_(torch.arange(rows) * 7 % runner.kv_length)  # each row its own position
    span = runner.span(int(inputs.positions.max()) + 1, GRAPH_SPAN_STEP)
    eager = runner.compute(inputs, {timesteps: list(range(rows))}, span).first(rows)
    replayed = runner.graphs.run(inputs, rows, span)
    assert replayed is not None, "no graph holds the whole batch"
    names = ("latents", "stop", "lm_hidden", "residual_hidden")
    return max(difference(getattr(eager, name), getattr(replayed, name)) for name in names)


@torch.inference_mode()
def decode_difference(decoder: StreamingVAEDecoder, latents: torch.Tensor) -> float:
    """The same for a VAE decode of ``latents`` (a row per slot, a graph's frames), each run from reset states."""
    every_slot = list(range(latents.shape[0]))
    decoder.reset(every_slot)
    eager = decoder.decode(latents, every_slot)
    decoder.reset(every_slot)
    replayed = decoder.decode_batch(latents)
    decoder.reset(every_slot)
    return difference(eager, replayed)


def difference(eager: torch.Tensor, replayed: torch.Tensor) -> float:
    """The largest absolute difference: 0 only where every element is equal, infinite for another shape or a NaN
    (which no comparison would otherwise flag)."""
    if eager.shape != replayed.shape:
        return float("inf")
    if torch.equal(eager, replayed):
        return 0.0
    return float((eager.to(torch.float64) - replayed.to(torch.float64)).abs().nan_to_num(nan=float("inf")).max())


def _random(device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    return generator


def _eager(runner: StepRunner, decoder: StreamingVAEDecoder, reason: str) -> str:
    runner.graphs = decoder.graphs = None
    return off(reason)
