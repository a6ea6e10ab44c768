"""Who may call and what one call may cost: ``limits:`` and ``access:`` of the Serve config's ``args:`` block."""

from __future__ import annotations

import ipaddress

import limits
from pydantic import Field, PositiveInt, field_validator

from serve_app.config.base import Strict

API_KEYS_ENV = "VOXCPM_SERVE_API_KEYS"
ADMIN_KEYS_ENV = "VOXCPM_SERVE_ADMIN_KEYS"
ALLOW_ANONYMOUS_ENV = "VOXCPM_SERVE_ALLOW_ANONYMOUS"
# The decoded-sample budget of a reference upload by default: its duration limit at 48 kHz stereo.
BUDGET_RATE, BUDGET_CHANNELS = 48000, 2
FORM_OVERHEAD_BYTES = 64 * 1024  # a multipart body's fields and boundaries around its file


class SSMLConfig(Strict):
    """How an SSML text is read (docs/ssml.md), and what it may become before any audio is made."""

    strict: bool = Field(
        False,
        description="An element or attribute outside the supported subset is refused (400 naming the text's "
        "field) rather than its text spoken and its name given in the X-Ignored-Fields header.",
    )
    max_break_s: float = Field(
        10.0, gt=0, le=10, description="One <break>: longer is a 400 naming the text's field (10 s at most)."
    )
    max_total_break_s: float = Field(60.0, gt=0, description="Every <break> of one text together: past it, 413.")
    max_voices: PositiveInt = Field(8, description="<voice> elements in one text: past it, 413.")
    max_chars: PositiveInt = Field(
        10_000, description="The text spoken once aliases and <say-as> are written out: past it, 413."
    )
    max_depth: PositiveInt = Field(
        32, le=1000, description="Nested elements: deeper is a 400, refused while the text is parsed."
    )


class LimitsConfig(Strict):
    """Bounds on what one request may ask for."""

    max_text_chars: PositiveInt = 5000
    ssml: SSMLConfig = SSMLConfig()
    max_lexicon_bytes: PositiveInt = Field(
        2 * 1024 * 1024, description="An uploaded lexicon (a PLS file or its JSON entries), as sent: 413 naming it."
    )
    max_lexicon_entries: PositiveInt = Field(10_000, description="Entries of one lexicon: 413 naming the upload.")
    max_request_lexicons: PositiveInt = Field(
        3, le=10, description="Lexicons one request may name (`lexicons`): more is a 400 naming `lexicons`."
    )
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
        return self.max_prompt_audio_bytes + 4 * self.max_text_chars + FORM_OVERHEAD_BYTES


class TenantQuotas(Strict):
    """What one tenant may keep (admins are not counted: theirs are the shared ones)."""

    voices: PositiveInt | None = Field(100, description="Saved voices per tenant; past it a create is a 403.")
    voice_bytes: PositiveInt | None = Field(
        512 * 1024 * 1024, description="Bytes of saved recordings per tenant; past it a create is a 403."
    )
    adapters: PositiveInt | None = Field(20, description="Uploaded adapters per tenant; past it an upload is a 403.")
    adapter_bytes: PositiveInt | None = Field(
        2 * 1024**3, description="Bytes of uploaded adapter weights per tenant; past it an upload is a 403."
    )
    lexicons: PositiveInt | None = Field(50, description="Saved pronunciation lexicons per tenant; past it a 403.")
    lexicon_bytes: PositiveInt | None = Field(
        64 * 1024 * 1024, description="Bytes of lexicon files (as uploaded) per tenant; past it an upload is a 403."
    )
    jobs: PositiveInt | None = Field(
        10, description="Unfinished (queued or running) jobs per tenant; past it a submission is a 403."
    )
    job_chars: PositiveInt | None = Field(
        5_000_000,
        description="Characters of text in a tenant's unfinished jobs, the new one's included; past it a 403.",
    )
    job_bytes: PositiveInt | None = Field(
        20 * 1024**3,
        description="Bytes of finished job audio a tenant keeps (until its jobs are deleted or expire); at it a "
        "submission is a 403 (checked at submission: a running job finishes).",
    )


class AccessConfig(Strict):
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
