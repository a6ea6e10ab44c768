"""How an answer's audio is to be encoded: its format, rate and speaking rate, checked against the model and
what the format can carry once, when the request is built (``synthesis_requests.py``), then read by the model
client (what it counts), the audio output (what it encodes) and the response (its headers)."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.audio import codecs
from serve_app.audio.codecs import AudioFormat
from serve_app.audio.stretch import check_speed
from serve_app.errors import InvalidField
from serve_app.metrics import RequestTrace
from serve_app.model.types import ModelInfo


@dataclass(frozen=True)
class Output:
    """How an answer is encoded."""

    format: AudioFormat
    sample_rate: int
    model: ModelInfo
    trace: RequestTrace
    speed: float = 1.0  # speaking rate, applied by time-stretch before encoding
    ignored: tuple[str, ...] = ()  # what of the request was not followed (SSML outside the subset)

    @property
    def media_type(self) -> str:
        return codecs.MEDIA_TYPES[self.format]

    def headers(self) -> dict[str, str]:
        headers = {"X-Sample-Rate": str(self.sample_rate), "X-Model": self.model.name}  # Serve adds X-Request-ID
        if self.ignored:
            headers["X-Ignored-Fields"] = ", ".join(self.ignored)
        return headers


def checked(info: ModelInfo, fmt: AudioFormat, requested_rate: int | None, trace: RequestTrace, speed: float) -> Output:
    """The answer's format, rate and speaking rate for the model ``info`` describes, checked against what the
    format can carry (a 4xx naming ``sample_rate`` or ``speed``)."""
    check_speed(speed)
    trace.model = info.name
    try:
        rate = codecs.output_rate(fmt, info.sample_rate, requested_rate)
    except ValueError as exc:
        raise InvalidField(str(exc), "sample_rate") from None
    return Output(fmt, rate, info, trace, speed)
