"""Request building: what a client sent (a form, a JSON body, a WebSocket ``init``) as the model request it
stands for, once, for every route. The text's length, the uploads decoded within their bounds, a saved
voice and adapter the caller may use, and the fields a model cannot take (``model/capabilities.py``)."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.audio.decode import AudioBounds, DecodePool, decode_upload
from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, InvalidField, NotFound, PayloadTooLarge
from serve_app.ingress import audio_output
from serve_app.ingress.audio_output import Output
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.schemas import OUTPUT_FIELDS, VOICE_FIELDS, TTSStreamForm, optional_text
from serve_app.ingress.ws_messages import Init
from serve_app.metrics import RequestTrace
from serve_app.model.types import PromptAudio, SynthesisRequest
from serve_app.store.adapter_store import Adapter, AdapterStore
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import Voice, VoiceStore


class RequestBuilder:
    def __init__(self, client: ModelClient, voices: VoiceStore, adapters: AdapterStore, limits: LimitsConfig) -> None:
        self._client = client
        self.voices = voices
        self.adapters = adapters
        self._limits = limits
        self._audio_bounds = AudioBounds(
            max_seconds=limits.max_prompt_audio_seconds,
            max_channels=limits.max_prompt_audio_channels,
            max_sample_rate=limits.max_prompt_audio_sample_rate,
            max_samples=limits.prompt_audio_sample_budget,
            timeout_s=limits.prompt_audio_decode_timeout_s,
        )
        # one per ingress replica (the replica builds one RequestBuilder): its uploads' own decode threads
        self._decodes = DecodePool(limits.decode_workers)

    @property
    def max_upload_bytes(self) -> int:
        return self._limits.max_prompt_audio_bytes

    @property
    def max_adapter_bytes(self) -> int:
        return self._limits.max_adapter_bytes

    def check_text_length(self, text: str, field: str) -> None:
        if len(text) > self._limits.max_text_chars:
            raise PayloadTooLarge(
                f"{field} has {len(text)} characters; the limit is {self._limits.max_text_chars}", field
            )

    async def from_form(
        self, form: TTSStreamForm, prompt_audio: bytes, reference_audio: bytes, trace: RequestTrace, caller: Principal
    ) -> tuple[SynthesisRequest, Output]:
        """What a /api/tts* form asks for (its uploads already read): the synthesis, and how to encode it."""
        model = self._client.resolve(form.model)
        output = await audio_output.output(self._client, form.format, form.sample_rate, model, trace, form.speed)
        self.check_text_length(form.text, "text")
        self.check_text_length(form.prompt_text or "", "prompt_text")
        await self._client.require(
            model, {"instructions": form.instructions, "reference_audio": reference_audio or None}
        )
        prompt = await self.recording(prompt_audio, model, "prompt_audio", form.prompt_text)
        reference = await self.recording(reference_audio, model, "reference_audio")
        voice = await self.voice(form.voice_id, "voice_id", caller) if form.voice_id else None
        if voice is not None and (prompt is not None or reference is not None):
            field = "prompt_audio" if prompt is not None else "reference_audio"
            raise InvalidField(f"give either voice_id or {field}, not both", "voice_id")
        adapter = await self.adapter(form.adapter, voice, model, caller)
        knobs = form.model_dump(exclude={*VOICE_FIELDS, *OUTPUT_FIELDS, "model", "adapter"})  # voxcpm's names
        voices = {"prompt": prompt, "reference": reference, "voice": voice, "adapter": adapter}
        return SynthesisRequest(**voices, **trace.ids, **knobs), output

    async def from_init(self, init: Init, trace: RequestTrace, caller: Principal) -> tuple[SynthesisRequest, Output]:
        """What a WebSocket's ``init`` asks of every sentence of the socket: the request each sentence fills in
        (its ``text``, its ids, the first sentence's voice as ``prompt``), and how the audio is encoded. A sentence
        the socket cut is one segment at the model, never split again (``serve_app/text/sentences.py``)."""
        model = self._client.resolve(init.model)
        instructions = optional_text(init.instructions)
        await self._client.require(model, {"instructions": instructions})  # VoxCPM2: a voice designed, or styled
        voice = await self.voice(init.voice_id, "voice_id", caller) if init.voice_id else None
        adapter = await self.adapter(init.adapter, voice, model, caller)
        output = await audio_output.output(self._client, init.audio_format, init.sample_rate, model, trace)
        knobs = {**init.knobs(), "instructions": instructions, "adapter": adapter}
        return SynthesisRequest(text="", voice=voice, one_sentence=True, **knobs), output

    async def adapter(
        self, id_or_name: str | None, voice: Voice | None, model: str, caller: Principal
    ) -> Adapter | None:
        """The LoRA adapter a request asks for (``adapter``, by id or name), else the one its saved voice
        carries; one of another model than the request's is a 400 naming the field that brought it."""
        if id_or_name:
            field, found = "adapter", await asyncio.to_thread(self.adapters.find, id_or_name, "adapter", caller)
        elif voice is not None and voice.adapter_id:
            field, found = "voice", await asyncio.to_thread(self._voice_adapter, voice, caller)
        else:
            return None
        if found.model != model:
            raise BadRequest(
                f"{field} brings adapter {found.name!r} of model {found.model!r}; this request is for {model!r}", field
            )
        return found

    def _voice_adapter(self, voice: Voice, caller: Principal) -> Adapter:
        assert voice.adapter_id is not None
        try:
            return self.adapters.get(voice.adapter_id, caller)
        except NotFound:
            raise BadRequest(f"voice {voice.name!r} carries an adapter that was deleted", "voice") from None

    async def voice(self, id_or_name: str, field: str, caller: Principal) -> Voice:
        """A saved voice the caller may use, by id or name (another tenant's is a 404, as an absent one)."""
        return await asyncio.to_thread(self.voices.find, id_or_name, field, caller)

    async def reference(self, data: bytes, field: str) -> tuple[np.ndarray, int]:
        """An uploaded recording as mono float32 at its own rate, within the configured limits."""
        if not data:
            raise InvalidField(f"{field} is required", field)
        return await decode_upload(data, self._audio_bounds, field, self._decodes)

    async def recording(self, data: bytes, model: str, field: str, text: str | None = None) -> PromptAudio | None:
        """An uploaded prompt or reference recording (its bytes) at the model's prompt rate; none when not sent."""
        if not data:
            if text is not None:
                raise InvalidField(f"prompt_text was given without {field}", field)
            return None
        info = await self._client.model_info(model)
        samples, rate = await decode_upload(data, self._audio_bounds, field, self._decodes, info.prompt_sample_rate)
        return PromptAudio(samples=samples, sample_rate=rate, text=text)
