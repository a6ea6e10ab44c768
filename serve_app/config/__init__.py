"""Typed application arguments: the ``args:`` block of ``configs/*.yaml``, one module a section (``models.py``,
``access.py``) and the whole here.

Ray Serve validates that block against :class:`AppConfig` before the app builder runs, so a
typo in a config fails at ``serve run``/``serve deploy`` with a clear message.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PositiveInt, field_validator, model_validator

from serve_app.config.access import (
    ADMIN_KEYS_ENV,
    ALLOW_ANONYMOUS_ENV,
    API_KEYS_ENV,
    BUDGET_CHANNELS,
    BUDGET_RATE,
    FORM_OVERHEAD_BYTES,
    AccessConfig,
    LimitsConfig,
    TenantQuotas,
)
from serve_app.config.base import Strict
from serve_app.config.jobs import JobsConfig
from serve_app.config.models import LoRAShape, ModelConfig, SyntheticPreset

__all__ = [
    "ADMIN_KEYS_ENV",
    "ALLOW_ANONYMOUS_ENV",
    "API_KEYS_ENV",
    "BUDGET_CHANNELS",
    "BUDGET_RATE",
    "FORM_OVERHEAD_BYTES",
    "AccessConfig",
    "AlignerConfig",
    "AppConfig",
    "JobsConfig",
    "LimitsConfig",
    "LoRAShape",
    "ModelConfig",
    "OpenAIRouteConfig",
    "SyntheticPreset",
    "TenantQuotas",
    "WebSocketConfig",
]


class OpenAIRouteConfig(Strict):
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


class WebSocketConfig(Strict):
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


class AlignerConfig(Strict):
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


class AppConfig(Strict):
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
    lexicons_dir: str = Field(
        "lexicons",
        description="Where saved pronunciation lexicons live; like voices_dir, every ingress replica must see it.",
    )
    jobs: JobsConfig = JobsConfig()
    jobs_dir: str = Field(
        "jobs",
        description="Where background jobs live (what was asked, progress, audio), each Serve application's in a "
        "directory of its own named after it; like voices_dir, every ingress replica and the job runner must see it.",
    )
    usage_dir: str = Field(
        "usage",
        description="Where each replica writes the usage it counted, per tenant and day (GET /api/usage); every "
        "ingress replica and the job runner must see it, like voices_dir.",
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
