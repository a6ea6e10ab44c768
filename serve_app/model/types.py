"""What the ingress and the model deployment exchange over a Ray Serve handle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve_app.store.adapter_store import Adapter
from serve_app.store.voice_store import Voice


@dataclass(frozen=True)
class PromptAudio:
    """Decoded reference audio: mono float32 at the model's prompt sample rate, plus its transcript."""

    samples: np.ndarray
    sample_rate: int
    text: str | None


Priority = Literal["interactive", "background"]  # a listener waits, or a job does


@dataclass(frozen=True)
class Span:
    """A stretch of an utterance's text said one way: what markup, dialogue and jobs build a request from.

    The span's own voice and rate apply to it alone; the request's other settings (steps, seed, adapter, ...)
    to every span. Its sentences are generated as any others (one voice kept across them, ``model/plan.py``).
    """

    text: str
    voice: Voice | None = None  # a saved voice of its own; None: the request's (its prompt, voice or reference)
    speed: float = 1.0  # its speaking rate, on top of the answer's own ``speed``
    pause_after: float = 0.0  # seconds of silence after it


@dataclass(frozen=True)
class SynthesisRequest:
    """One utterance to synthesize; field meanings and defaults follow the seed API.

    Its text is a list of spans: ``spans``, or when there are none (every route's request today), ``text`` as
    one span in the request's voice. Given spans, ``text`` is their texts joined (for limits and logs), so a copy
    with other spans is made with ``text=""`` beside them (``dataclasses.replace`` refuses a text that is not).
    """

    text: str = ""
    request_id: str = ""
    route: str = ""  # the HTTP route that asked, for the replica's metrics
    prompt: PromptAudio | None = None  # an uploaded recording (with its transcript: a continuation prompt) ...
    voice: Voice | None = None  # ... or a saved voice, which model replicas load and encode once
    reference: PromptAudio | None = None  # an isolated reference recording (VoxCPM2), alone or with ``prompt``
    cfg_value: float = 2.0
    inference_timesteps: int = 5
    min_len: int = 2
    max_len: int = 4096
    normalize: bool = False
    denoise: bool = False
    retry_badcase: bool = True
    retry_badcase_max_times: int = 3
    retry_badcase_ratio_threshold: float = 6.0
    seed: int | None = None  # of the diffusion noise: the same seed, text and settings give the same audio
    instructions: str | None = None  # a description of the voice or style; VoxCPM2 models only
    adapter: Adapter | None = None  # a LoRA adapter of this model (model/adapters.py); None: the base model
    segments: bool = False  # a stream also says where each sentence ends (SegmentEnd), for timestamps
    one_sentence: bool = False  # the text is one sentence already (the WebSocket cut it): one segment, never split
    priority: Priority = "interactive"  # background: after every live request (model/batched/scheduler.py)
    spans: tuple[Span, ...] = ()

    def __post_init__(self) -> None:
        if self.spans:
            joined = " ".join(span.text for span in self.spans)
            if self.text and self.text != joined:
                raise ValueError("a request's text is its spans' texts joined: give one or the other")
            object.__setattr__(self, "text", joined)

    @property
    def spoken(self) -> tuple[Span, ...]:
        """What to say, span by span."""
        return self.spans or (Span(self.text),)


@dataclass(frozen=True)
class SegmentEnd:
    """Where a sentence's audio ends in a stream that asked for it (``segments``): after its last chunk or
    before the next sentence's first, the middle of the crossfade between them (the stream's end for the last)."""

    index: int
    text: str
    end: int  # samples from the stream's start, at the model's rate
    too_long: bool = False  # still ran to retry_badcase's ratio after its retries (checked where they apply)


Chunk = np.ndarray | SegmentEnd  # what a stream yields


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, for routing, validation and /health."""

    name: str
    source: str
    architecture: str  # "voxcpm" or "voxcpm2"
    sample_rate: int  # of the audio it outputs
    prompt_sample_rate: int  # at which it encodes reference audio
    device: str
    denoiser: bool
    engine: str = "voxcpm"  # which engine generates: "voxcpm" (the reference) or "batched"
    synthetic: bool = False  # random weights (serve_app/model/weights.py): speaks noise
    capabilities: tuple[str, ...] = ()  # what beyond plain speech it can do (serve_app/model/capabilities.py)
    lora: dict | None = None  # the LoRA shape of the adapters it serves (config `lora:`); None: none
    graphs: str = "off: not asked for"  # its steps from CUDA graphs: "on", or "off: <why>" (batched/graph_check.py)


@dataclass(frozen=True)
class ReplicaStatus:
    """One model replica's view of its node's GPUs and of the memory it holds, as of ``reported_at``."""

    replica_id: str
    node_id: str
    model: str
    device: str
    gpus: list[dict]
    torch_memory_allocated_bytes: int | None
    torch_memory_reserved_bytes: int | None
    generations_in_flight: int
    prompt_cache_hits: int
    prompt_cache_misses: int
    reported_at: float  # Unix time
