"""What a model can do, and the one rule for the request fields only some models take.

Every route (the native forms, OpenAI's speech, the WebSocket's ``init``, voice design) and the model
replica itself ask this module, so a field is refused, or taken, the same way everywhere. A model's
capabilities travel in its :class:`ModelInfo` (``/health`` and ``/v1/models`` show them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serve_app.errors import BadRequest, InvalidField
from serve_app.model.types import ModelInfo, SynthesisRequest

INSTRUCTIONS = "instructions"  # a description of the voice or style (and voice design from one)
REFERENCE_AUDIO = "reference_audio"  # an isolated reference recording, alone or beside a continuation prompt
CLONING_WITHOUT_TRANSCRIPT = "cloning_without_transcript"  # prompt_audio without prompt_text
BY_ARCHITECTURE = {"voxcpm2": (INSTRUCTIONS, REFERENCE_AUDIO, CLONING_WITHOUT_TRANSCRIPT), "voxcpm": ()}
# The request fields (by every route's names) that need a capability.
FIELD_NEEDS = {"instructions": INSTRUCTIONS, "description": INSTRUCTIONS, "reference_audio": REFERENCE_AUDIO}


def unsupported(info: ModelInfo, fields: Mapping[str, object]) -> str | None:
    """The first of ``fields`` given (a value other than None) that ``info``'s model cannot take."""
    return next(
        (field for field, value in fields.items() if value is not None and FIELD_NEEDS[field] not in info.capabilities),
        None,
    )


def require(info: ModelInfo, fields: Mapping[str, object], able: Iterable[str] | None = None) -> None:
    """A 400 naming the first given field ``info``'s model cannot take, and the served models that can
    (``able``, when the caller knows them)."""
    if (field := unsupported(info, fields)) is None:
        return
    served = "" if able is None else f" (served here: {', '.join(able) or 'none'})"
    raise BadRequest(
        f"{field}: model {info.name!r} ({info.architecture}) cannot take it; VoxCPM2 models can{served}", field
    )


def check(info: ModelInfo, request: SynthesisRequest) -> None:
    """Refuse what this model cannot do with the request's recordings and settings, naming the field (voxcpm's
    own rules: its CLI's ``validate_prompt_related_args``, ``validate_reference_support``, ``build_prompt_cache``)."""
    if request.denoise and not info.denoiser:
        raise InvalidField(
            "denoise=true needs the denoiser, which this deployment does not load "
            "(set model.load_denoiser: true in the Serve config)",
            "denoise",
        )
    prompt = request.prompt
    if prompt is not None and not prompt.text and CLONING_WITHOUT_TRANSCRIPT not in info.capabilities:
        raise InvalidField(
            f"prompt_text (the transcript of prompt_audio) is required by {info.architecture} models", "prompt_text"
        )
    for audio, field in ((prompt, "prompt_audio"), (request.reference, "reference_audio")):
        if audio is not None and audio.sample_rate != info.prompt_sample_rate:
            raise InvalidField(f"{field} must be resampled to {info.prompt_sample_rate} Hz", field)
    require(info, {"instructions": request.instructions or None, "reference_audio": request.reference})
    if request.reference is not None and prompt is not None and not prompt.text:
        raise InvalidField(
            "prompt_audio next to reference_audio is a continuation prompt: it needs prompt_text", "prompt_text"
        )
    if request.instructions and prompt is not None and prompt.text:
        raise BadRequest(
            "instructions cannot steer a continuation (prompt_audio with prompt_text): voxcpm puts the "
            "transcript before the text, so the description would not open it (voxcpm's CLI refuses --control "
            "with --prompt-text). Send the recording as reference_audio, or prompt_audio without prompt_text",
            "instructions",
        )
