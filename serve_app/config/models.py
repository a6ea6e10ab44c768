"""A model and how its replicas load it: ``models[]`` of the Serve config's ``args:`` block."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from serve_app.config.base import Strict

# The synthetic checkpoints serve_app/model/synthetic.py can write (one preset each, checked by a test).
SyntheticPreset = Literal["tiny-voxcpm1.5", "tiny-voxcpm2", "voxcpm-0.5b", "voxcpm1.5", "voxcpm2"]


class LoRAShape(Strict):
    """The one LoRA shape a model's adapters have (voxcpm fixes it when it builds the model): what its trainer
    writes by default (rank 32, alpha 16, on the LMs' and the local DiT's attention projections)."""

    r: PositiveInt = Field(32, description="The adapters' rank (voxcpm's LoRAConfig.r).")
    alpha: float = Field(16.0, gt=0, description="Their alpha: the low-rank update is scaled by alpha / r.")
    enable_lm: bool = Field(True, description="On the base and residual LMs' q/k/v/o projections.")
    enable_dit: bool = Field(True, description="On the local DiT's q/k/v/o projections.")
    enable_proj: bool = Field(False, description="On the projections between the modules (voxcpm's enable_proj).")


class ModelConfig(Strict):
    """One VoxCPM model and how its replicas load it (how many requests they hold: the deployment's
    ``max_ongoing_requests`` and ``max_queued_requests`` in the config's ``deployments:``)."""

    name: str = Field("voxcpm", description="Public model name: the `model` field of requests, X-Model, /health.")
    deployment_name: str = Field(
        "VoxCPMModel",
        description="The Ray Serve deployment serving this model: the name its `deployments:` entry uses "
        "(num_gpus, autoscaling). Unique per model.",
    )
    source: str = Field(
        "openbmb/VoxCPM1.5",
        description="Hugging Face model id (downloaded once, then loaded from the cache), or a local checkpoint "
        "directory (an absolute path, or one written ./dir). See serve_app/model/weights.py.",
    )
    gpu_source: str | None = Field(
        None,
        description="The release to load instead of a hub `source` when the replica sees a CUDA GPU and "
        "`device` allows one ('auto' or 'cuda...'): a larger release where it runs in real time.",
    )
    synthetic_preset: SyntheticPreset | None = Field(
        None,
        description="A synthetic (random-weight, noise-speaking) checkpoint preset. With a local `source` that "
        "has no checkpoint yet, it is written there on first start (local development and tests). With a hub "
        "`source` that cannot be reached, it is written to checkpoints/<preset> and served instead, with a "
        "banner in the console. Either way /health and /v1/models say `synthetic: true`.",
    )
    cache_dir: str | None = Field(None, description="Hugging Face cache directory for downloaded weights.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    optimize: bool = Field(
        True,
        description="engine: voxcpm — torch.compile the model (CUDA only); costs start-up time. The batched "
        "engine captures CUDA graphs of its steps instead (`cuda_graphs`).",
    )
    load_denoiser: bool = Field(False, description="Load the ZipEnhancer denoiser so `denoise=true` works.")
    denoiser_model: str = "iic/speech_zipenhancer_ans_multiloss_16k_base"
    warmup: bool = Field(True, description="Generate one short utterance at replica start.")
    max_step_s: float = Field(
        30.0,
        gt=0,
        description="The longest a step of the engine's thread may run (the reference engine's non-streaming "
        "requests: a sentence) before the replica's health check calls it stuck: its requests then end with a 503 "
        "and Serve replaces it (docs/operations.md: Health checks). Well above the slowest real step, so that only "
        "a hang trips it.",
    )
    prompt_cache_size: int = Field(
        32, ge=0, description="Encoded reference prompts each replica keeps (least recently used dropped); 0: none."
    )
    engine: Literal["voxcpm", "batched"] = Field(
        "voxcpm",
        description="'voxcpm': voxcpm's own generation loop, one request at a time per replica; 'batched': many "
        "requests stepped together on one model instance (continuous batching), each with the audio the "
        "reference engine gives it alone.",
    )
    max_batch_size: PositiveInt = Field(
        16,
        description="engine: batched — requests generating together (one KV slot each); more wait in the "
        "replica's queue (the deployment's max_ongoing_requests bounds it) and join as slots free.",
    )
    first_step_alone: bool | None = Field(
        None,
        description="engine: batched — newcomers first: a stream that joins a running batch gets its first patch "
        "(its first audio) from a step of its own right after its prefill, instead of from the batch's next step, "
        "and one that arrives while the batch's model call runs is admitted before that step's VAE call: its "
        "first audio waits for at most one call in flight and its own small step, not for whole steps of the "
        "batch. Only while the batch has room and time to spare (at most 3/4 of its slots held, nobody waiting "
        "for one, its steps taking at most half a patch's audio) and the newcomers are at most half as many as "
        "the streams running; the running streams' next chunk waits for that small step. null (the default): "
        "on where steps run eagerly (CPU; on the 2-core CPU, open loop at 70 % of capacity, first audio p95 11 "
        "against 17 ms: benchmarks/README.md, Newcomers first), off where they replay CUDA graphs (the "
        "newcomer's step would run eagerly; yet to be measured on a GPU). Either way requests are admitted, and "
        "prefilled together, before every step (in arrival order, while slots are free), so running decodes never "
        "starve a newcomer.",
    )
    background_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="engine: batched — the share of the batch's slots that background requests (a job's) may hold "
        "at once; they are admitted only while no live request waits for a slot, skip steps while the live ones "
        "need the time, and give their slots up at a sentence's end to live requests waiting for them "
        "(docs/engines.md: Live requests first).",
    )
    batch_invariant: bool = Field(
        False,
        description="Compute with kernels whose result for a request does not depend on the batch size (on CPU: "
        "PyTorch's own matrix products instead of oneDNN's; slower). With a bfloat16 model, the batched engine's "
        "audio for a request is then the reference engine's bit for bit. For tests and audits.",
    )
    kv_cache_length: PositiveInt | None = Field(
        None,
        description="engine: batched — positions per KV slot (prompt + text + generated steps); default: the "
        "model's own max_length (4096). KV memory = max_batch_size x this x the model's per-token size.",
    )
    cuda_graphs: bool = Field(
        False,
        description="engine: batched, on CUDA — replay each decode step and the streams' VAE decode from CUDA "
        "graphs captured at start (for batch sizes 1, 2, 4, 8 and every 16; the step's per 1,024 positions of KV "
        "span): a step's thousands of small kernels launched at once instead of one by one. Costs seconds at "
        "start; steps with a non-default inference_timesteps run eagerly. Off until it has run on a GPU "
        "(tests/model/test_cuda.py, benchmarks/gpu_run.sh): it is tested on CPU only, where nothing is captured.",
    )
    decode_patches: int = Field(
        16,
        ge=1,
        le=64,
        description="The most latent patches of one request decoded in one VAE call. A stream's first patch goes "
        "alone (first audio unchanged); after that each call takes as many new patches as a quarter of those the "
        "stream has sent allows (1, 2, 4, ... up to this), so a stream whose steps take under 0.8x the audio they "
        "make never runs dry (within float32 rounding, ~4e-7, of patch-by-patch decoding). With more than 4 "
        "streams in a batched step, where one call for all of them costs less, they decode a patch per step "
        "together (not with batch_invariant). Non-streaming sentences decode this many at a time. On the tiny "
        "models a stream costs about what the same audio unstreamed does (docs/engines.md: Incremental VAE "
        "decode). 1: every patch in a call of its own.",
    )
    lora: LoRAShape | None = Field(
        LoRAShape(),
        description="The LoRA shape of the adapters this model serves (docs/adapters.md); null: no adapters, and "
        "none of the (small) cost their layers add to the reference engine's requests.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters declared here, by name: a voxcpm lora_weights.safetensors (or .ckpt) file, or the "
        "directory its trainer wrote it in, on every replica's disk. Loaded and checked at start, shared with "
        "every tenant, listed by GET /api/adapters; they cannot be deleted through the API.",
        examples=[{"narrator": "/models/lora/narrator/lora_weights.safetensors"}],
    )
    max_resident_adapters: PositiveInt = Field(
        8,
        description="Uploaded adapters a replica keeps loaded (least recently used dropped; the declared ones stay): "
        "a request whose adapter is not loaded reads it first (docs/adapters.md: what that costs). Adapters in "
        "use stay loaded until their requests end.",
    )
    stream_coalesce_lead_s: float = Field(
        0.0,
        ge=0,
        description="Streams: once a listener has this much audio in hand beyond playback (counted from its first "
        "chunk), hold the model's chunks and send them together, never letting it fall below half this: the same "
        "audio in fewer messages, each of which costs the ingress and Serve's proxy CPU (docs/engines.md: 'Fewer, "
        "larger chunks once a listener is ahead'). The first chunks are never held. 0 (default): every chunk as "
        "soon as it is decoded, as the API promises; 0.3 where the HTTP side's CPU is what limits the streams a "
        "replica serves.",
    )
    stream_coalesce_max_s: float = Field(
        0.25, gt=0, description="Streams: the most audio sent in one piece while coalescing (stream_coalesce_lead_s)."
    )
