"""Typed application arguments: the ``args:`` block of ``configs/*.yaml``.

Ray Serve validates that block against :class:`AppConfig` before the app builder runs, so a
typo in a config fails at ``serve run``/``serve deploy`` with a clear message.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

import limits
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

# The synthetic checkpoints serve_app/model/synthetic.py can write (one preset each, checked by a test).
SyntheticPreset = Literal["tiny-voxcpm1.5", "tiny-voxcpm2", "voxcpm-0.5b", "voxcpm1.5", "voxcpm2"]
API_KEYS_ENV = "VOXCPM_SERVE_API_KEYS"
ADMIN_KEYS_ENV = "VOXCPM_SERVE_ADMIN_KEYS"
ALLOW_ANONYMOUS_ENV = "VOXCPM_SERVE_ALLOW_ANONYMOUS"
# The decoded-sample budget of a reference upload by default: its duration limit at 48 kHz stereo.
BUDGET_RATE, BUDGET_CHANNELS = 48000, 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoRAShape(_Strict):
    """The one LoRA shape a model's adapters have (voxcpm fixes it when it builds the model): what its trainer
    writes by default (rank 32, alpha 16, on the LMs' and the local DiT's attention projections)."""

    r: PositiveInt = Field(32, description="The adapters' rank (voxcpm's LoRAConfig.r).")
    alpha: float = Field(16.0, gt=0, description="Their alpha: the low-rank update is scaled by alpha / r.")
    enable_lm: bool = Field(True, description="On the base and residual LMs' q/k/v/o projections.")
    enable_dit: bool = Field(True, description="On the local DiT's q/k/v/o projections.")
    enable_proj: bool = Field(False, description="On the projections between the modules (voxcpm's enable_proj).")


class ModelConfig(_Strict):
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
        "audio in fewer messages, each of which costs the ingress and Serve's proxy CPU (README: 'Fewer, larger "
        "chunks'). The first chunks are never held. 0 (default): every chunk as soon as it is decoded, as the "
        "API promises; 0.3 where the HTTP side's CPU is what limits the streams a replica serves.",
    )
    stream_coalesce_max_s: float = Field(
        0.25, gt=0, description="Streams: the most audio sent in one piece while coalescing (stream_coalesce_lead_s)."
    )


class LimitsConfig(_Strict):
    """Bounds on what one request may ask for."""

    max_text_chars: PositiveInt = 5000
    max_prompt_audio_bytes: PositiveInt = Field(
        20 * 1024 * 1024,
        description="An uploaded reference recording (prompt_audio, reference_audio, a voice's "
        "audio), as sent: 413 naming the field.",
    )
    max_prompt_audio_seconds: float = Field(
        60.0, gt=0, description="A reference recording's duration, read from its header before its samples: 422."
    )
    max_prompt_audio_channels: PositiveInt = Field(
        8, description="A reference recording with more channels (its header says) is refused before decoding: 413."
    )
    max_prompt_audio_sample_rate: PositiveInt = Field(
        192000, description="A reference recording at a higher rate is refused before decoding: 413."
    )
    max_prompt_audio_samples: PositiveInt | None = Field(
        None,
        description="Decoded samples (frames x channels) a reference recording may have, checked from its header "
        "and again while it decodes (a header that lies is cut off): 413. Default: what max_prompt_audio_seconds "
        f"allows at {BUDGET_RATE // 1000} kHz stereo (60 s: 5,760,000 samples, 23 MB as float32).",
    )
    prompt_audio_decode_timeout_s: float = Field(
        10.0, gt=0, description="The longest one reference recording may take to decode: past it, 413."
    )
    decode_workers: PositiveInt = Field(
        2,
        description="Threads of an ingress replica that decode uploaded audio, a pool of their own: a slow decode "
        "holds one of these, never a thread other work needs. Past 4 decodes waiting per thread, uploads get 503.",
    )
    max_timestamped_audio_s: float = Field(
        300.0,
        gt=0,
        description="The longest audio POST /api/tts/with-timestamps answers with (it is held whole, to be sent "
        "base64 in JSON: about 70 MiB of the ingress's memory a minute at 96 kHz WAV, "
        "benchmarks/results/timestamps_memory.md): past it, 413 naming `text`. Longer audio: stream it (SSE "
        "timestamps or the WebSocket).",
    )
    max_adapter_bytes: PositiveInt = Field(
        160 * 1024 * 1024,
        description="An uploaded LoRA adapter's weights file (POST /api/adapters): 413 naming `weights`. The "
        "default holds a VoxCPM2 adapter of rank 64 in float32 (121 MiB; rank 32: 61 MiB; VoxCPM1.5: 28 and 56).",
    )
    overload_retries: int = Field(
        1,
        ge=0,
        description="Times the ingress asks Serve's router again (after 50 ms, then 100 ms, ...) when it refused "
        "a request for a full queue, before answering 503: the router also refuses requests that arrive "
        "together while it is still assigning the first of them to a replica with room.",
    )

    @property
    def prompt_audio_sample_budget(self) -> int:
        """``max_prompt_audio_samples``, or its default from the duration limit."""
        derived = int(self.max_prompt_audio_seconds * BUDGET_RATE * BUDGET_CHANNELS)
        return self.max_prompt_audio_samples or derived

    @property
    def max_form_field_bytes(self) -> int:
        """The longest form field a route reads: a text at its limit, 4 bytes a character in UTF-8 (64 KiB at least)."""
        return max(64 * 1024, 4 * self.max_text_chars)

    @property
    def max_request_bytes(self) -> int:
        """The largest body any route accepts: a reference upload, the text and the form around them."""
        return self.max_prompt_audio_bytes + 4 * self.max_text_chars + 64 * 1024


class TenantQuotas(_Strict):
    """What one tenant may keep (admins are not counted: theirs are the shared ones)."""

    voices: PositiveInt | None = Field(100, description="Saved voices per tenant; past it a create is a 403.")
    voice_bytes: PositiveInt | None = Field(
        512 * 1024 * 1024, description="Bytes of saved recordings per tenant; past it a create is a 403."
    )
    adapters: PositiveInt | None = Field(20, description="Uploaded adapters per tenant; past it an upload is a 403.")
    adapter_bytes: PositiveInt | None = Field(
        2 * 1024**3, description="Bytes of uploaded adapter weights per tenant; past it an upload is a 403."
    )


class AccessConfig(_Strict):
    """Who may call the API, as which tenant, how often, and from which web origins.

    Keys are written ``key`` (a tenant of its own) or ``tenant=key`` (several keys of one tenant, so a
    tenant keeps its voices when its key is rotated). With no keys at all there is one tenant, an admin,
    and only loopback clients are served unless ``allow_anonymous`` says otherwise.
    """

    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted `Authorization: Bearer <key>` keys, each `key` or `tenant=key`. Also read from the "
        f"{API_KEYS_ENV} environment variable (comma-separated), which keeps them out of the config.",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description=f"Keys of admins (same forms; also from the {ADMIN_KEYS_ENV} environment variable): they make "
        "and change the shared voices, see every tenant's, and see node addresses in /api/gpu/status.",
    )
    allow_anonymous: bool = Field(
        False,
        description="With no keys configured, serve clients from any address (else loopback only: others get "
        f"401 saying how to set keys). Also set by {ALLOW_ANONYMOUS_ENV}=true.",
    )
    rate_limit: str | None = Field(
        None,
        description="Requests allowed per API key (per client address when no keys are configured), in the "
        "`limits` library's notation, e.g. '120/minute' or '10/second;300/hour'; counted by each ingress "
        "replica; none: unlimited.",
        examples=["120/minute"],
    )
    failed_auth_rate_limit: str | None = Field(
        "30/minute",
        description="Requests with a missing or wrong key allowed per client address (when keys are configured), "
        "counted by each ingress replica; past it they get 429 instead of 401. Requests with a valid key are "
        "never counted here. None: unlimited.",
    )
    max_requests_per_key: PositiveInt | None = Field(
        None,
        description="HTTP requests one key may have in progress at once on an ingress replica, on every route "
        "(streams count until they end); past it 429 with Retry-After. None (default): no cap.",
    )
    max_sockets_per_key: PositiveInt | None = Field(
        None,
        description="WebSocket conversations one key may have open at once on an ingress replica; past it 429 "
        "with Retry-After. None (default): no cap.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of the reverse proxies in front of the service whose "
        "X-Forwarded-For the edge believes, for per-address limits; none (default): the peer's own address. "
        "A request carrying forwarding headers is never anonymous-loopback (docs/security.md).",
        examples=[["10.0.0.0/8"]],
    )
    quotas: TenantQuotas = TenantQuotas()
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Web origins whose pages may call the API (['*']: any); none: same origin only.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError naming what it cannot read
        return networks

    @field_validator("rate_limit", "failed_auth_rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is not None:
            limits.parse_many(value)  # raises ValueError naming what it cannot read
        return value


class OpenAIRouteConfig(_Strict):
    """How ``/v1/audio/speech`` treats what OpenAI's clients send: voice names, and fields a model cannot honour."""

    voices: dict[str, str] = Field(
        default_factory=dict,
        description="OpenAI voice names (any case) to saved voices (id or name): `alloy: narrator` makes `alloy` "
        "speak with the saved voice `narrator`, for clients that only offer OpenAI's names (pipecat). Names "
        "not mapped speak with the model's default voice.",
        examples=[{"alloy": "narrator", "nova": "3f2a9c0e5b7d4e8f9a1b2c3d4e5f6a7b"}],
    )
    strict: bool = Field(
        False,
        description="Refuse (400) fields the model cannot honour, such as `instructions` on VoxCPM 1.x, instead of "
        "ignoring them and naming them in the X-Ignored-Fields header. Some clients (Home Assistant) send "
        "`instructions` with every request, so the default is lenient.",
    )

    @field_validator("voices")
    @classmethod
    def _names_any_case(cls, voices: dict[str, str]) -> dict[str, str]:
        folded = {name.strip().casefold(): target for name, target in voices.items()}
        if len(folded) != len(voices):
            raise ValueError("voice names differ only in case or spaces; give each once")
        return folded


class WebSocketConfig(_Strict):
    """Bounds on one ``/api/tts/ws`` conversation, stated to the client in its ``ready`` event.

    Serve's proxy ends every connection ``http_options.request_timeout_s`` after it opened, sockets
    included, and each open socket holds one of the ingress replica's ``max_ongoing_requests``: keep
    ``max_session_s`` below the first and ``max_connections`` below the second (configs/*.yaml do).
    """

    init_timeout_s: float = Field(5.0, gt=0, description="The `init` message must come this soon (else 4408).")
    idle_timeout_s: float = Field(
        60.0, gt=0, description="Closed (4408) after this long without a client message while nothing is spoken."
    )
    max_session_s: float = Field(540.0, gt=0, description="A conversation's longest life; then closed (4408).")
    max_buffered_chars: PositiveInt = Field(
        5000, description="Text received and not yet spoken; a `text` message past it is refused (not fatal)."
    )
    max_message_bytes: PositiveInt = Field(65536, description="The largest client message; past it: 4400.")
    max_messages_per_s: PositiveInt = Field(100, description="Client messages per second; past it: 4429.")
    max_audio_ahead_s: float = Field(
        20.0,
        gt=0,
        description="The next sentence is not started while the audio sent is this far ahead of real time: "
        "Serve's proxy does not pass a slow reader's back-pressure on, so this bounds what waits for one.",
    )
    max_connections: PositiveInt = Field(
        48, description="Open sockets per ingress replica; more are refused (503) before they are accepted."
    )
    max_contexts: PositiveInt = Field(
        100,
        description="Contexts open at once on one socket (given text and not yet ended, cancelled or failed); a "
        "message that would open one more is refused with a non-fatal error naming its context_id.",
    )


class AlignerConfig(_Strict):
    """A CTC model that hears when each word is spoken (docs/api.md: Timestamps); without one, word times are
    estimated from each sentence's exact duration."""

    source: str = Field(
        description="A CTC checkpoint as transformers loads it (AutoModelForCTC with its tokenizer and feature "
        "extractor): a Hugging Face id, or a local directory. A wav2vec2 or MMS model trained on the characters "
        "of the languages spoken. Fetched like the weights (cache first; a hub that cannot be reached: a loud "
        "warning, and estimated times).",
        examples=["facebook/wav2vec2-base-960h"],
    )
    cache_dir: str | None = Field(None, description="Hugging Face cache directory for a downloaded checkpoint.")


class AppConfig(_Strict):
    """Everything the app builder needs; see configs/local.yaml, configs/prod.yaml, configs/multi-model.yaml.

    ``model:`` declares one model; ``models:`` several, each its own deployment, routed by the
    requests' ``model`` field, the first (or ``default_model``) answering requests that name none.
    """

    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()], min_length=1)
    default_model: str | None = Field(None, description="The model for requests that name none (default: the first).")
    limits: LimitsConfig = LimitsConfig()
    access: AccessConfig = AccessConfig()
    openai: OpenAIRouteConfig = OpenAIRouteConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    adapters_dir: str = Field(
        "adapters",
        description="Where uploaded LoRA adapters live; like voices_dir, every ingress and model replica must see it.",
    )
    aligner: AlignerConfig | None = Field(
        None,
        description="A forced aligner for word timestamps, run by the ingress (source: aligned); none: word times "
        "estimated from each sentence's exact duration by character share (source: estimated).",
    )
    voices_dir: str = Field(
        "voices",
        description="Where saved voices live (relative paths: the replica's working directory). Every ingress "
        "and model replica must see the same directory: on several nodes, shared storage.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_model_or_several(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            if "models" in data:
                raise ValueError("give either `model` or `models`, not both")
            data = {**data, "models": [data["model"]]}
            del data["model"]
        return data

    @model_validator(mode="after")
    def _names_are_unique(self) -> AppConfig:
        for attribute in ("name", "deployment_name"):
            values = [getattr(model, attribute) for model in self.models]
            if len(set(values)) != len(values):
                raise ValueError(f"each model needs its own {attribute}: {values}")
        if self.default_model is not None and self.default_model not in {m.name for m in self.models}:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models")
        return self

    @property
    def default(self) -> str:
        return self.default_model or self.models[0].name
