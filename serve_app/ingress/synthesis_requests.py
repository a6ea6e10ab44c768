"""Request building: what a client sent (a form, OpenAI's JSON body, a WebSocket ``init``) as the model request
it stands for and how its answer is encoded, once, for every route: the first stop of a request's one pass
(route -> request builder -> model client -> audio output -> response). The model resolved, the text's
length, the uploads read and decoded within their bounds, a saved voice and adapter the caller may use, the
fields a model cannot take (``model/capabilities.py``), and the answer's format and rate (``outputs.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
from fastapi import UploadFile

from serve_app.audio.codecs import AudioFormat
from serve_app.audio.decode import AudioBounds, DecodePool, decode_upload
from serve_app.config import LimitsConfig, OpenAIRouteConfig
from serve_app.errors import BadRequest, InvalidField, NotFound, PayloadTooLarge
from serve_app.ingress import markup, outputs
from serve_app.ingress.lexicon_rewriters import LexiconRewriters
from serve_app.ingress.markup import Marked
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.openai_schemas import OPENAI_PCM_RATE, OPENAI_VOICES, SpeechRequest, served_model
from serve_app.ingress.outputs import Output
from serve_app.ingress.schemas import OUTPUT_FIELDS, VOICE_FIELDS, TTSStreamForm, optional_text
from serve_app.ingress.ws_messages import Init
from serve_app.metrics import RequestTrace
from serve_app.model import capabilities
from serve_app.model.types import ModelInfo, PromptAudio, SynthesisRequest
from serve_app.store.adapter_store import Adapter, AdapterStore
from serve_app.store.lexicon_store import LexiconStore
from serve_app.store.tenants import Principal
from serve_app.store.voice_store import Voice, VoiceStore
from serve_app.text.lexicons import Rewriter


class RequestBuilder:
    def __init__(
        self,
        client: ModelClient,
        voices: VoiceStore,
        adapters: AdapterStore,
        lexicons: LexiconStore,
        limits: LimitsConfig,
    ) -> None:
        self._client = client
        self.voices = voices
        self.adapters = adapters
        self.lexicons = lexicons
        self._rewriters = LexiconRewriters(lexicons)
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
    def client(self) -> ModelClient:
        return self._client

    @property
    def max_adapter_bytes(self) -> int:
        return self._limits.max_adapter_bytes

    @property
    def limits(self) -> LimitsConfig:
        return self._limits

    def check_text_length(self, text: str, field: str) -> None:
        if len(text) > self._limits.max_text_chars:
            raise PayloadTooLarge(
                f"{field} has {len(text)} characters; the limit is {self._limits.max_text_chars}", field
            )

    async def from_form(
        self, form: TTSStreamForm, trace: RequestTrace, caller: Principal
    ) -> tuple[SynthesisRequest, Output]:
        """What a /api/tts* form asks for: the synthesis, and how to encode it."""
        prompt_audio = await self.upload(form.prompt_audio, "prompt_audio")
        reference_audio = await self.upload(form.reference_audio, "reference_audio")
        model = self._client.resolve(form.model)
        output = await self.output(model, form.format, form.sample_rate, trace, form.speed)
        if (form.text is None) == (form.turns is None):
            raise InvalidField(
                "give text, or a dialogue as turns: one of them", "text" if form.text is None else "turns"
            )
        sent, field = (form.text, "text") if form.text is not None else (form.turns or "", "turns")
        self.check_text_length(sent, field)
        self.check_text_length(form.prompt_text or "", "prompt_text")
        trace.characters = len(sent)
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
        said = await self.marked(sent, field, caller, _lexicons(form.lexicon_names(), voice), turns=field == "turns")
        exclude = {*VOICE_FIELDS, *OUTPUT_FIELDS, "model", "adapter", "text", "turns", "lexicons"}
        knobs = form.model_dump(exclude=exclude)  # voxcpm's names
        voices = {"prompt": prompt, "reference": reference, "voice": voice, "adapter": adapter}
        request = SynthesisRequest(**said.request_text, **voices, **trace.ids, **knobs)  # type: ignore[arg-type]
        return request, dataclasses.replace(output, ignored=said.ignored)

    async def from_openai(
        self, body: SpeechRequest, trace: RequestTrace, caller: Principal, config: OpenAIRouteConfig
    ) -> tuple[SynthesisRequest, Output, list[str]]:
        """What OpenAI's speech body asks for: the synthesis, how to encode it, and the fields ignored because
        the model cannot honour them (``config.strict``: refused instead)."""
        if body.timestamps is not None and body.stream_format != "sse":
            raise BadRequest("timestamps come as events of an SSE stream: set stream_format to sse", "timestamps")
        model = served_model(body.model, self._client)
        self.check_text_length(body.input, "input")
        trace.characters = len(body.input)
        rate = body.sample_rate or (OPENAI_PCM_RATE if body.response_format is AudioFormat.PCM else None)
        output = await self.output(model, body.response_format, rate, trace, body.speed)
        instructions, ignored = await self._openai_instructions(body, output.model, config.strict)
        voice = await self._openai_voice(body.voice_name, config, caller)
        adapter = await self.adapter(None, voice, model, caller)
        segments = body.timestamps is not None
        said = await self.marked(body.input, "input", caller, _lexicons(body.lexicon_names(), voice))
        knobs = {"voice": voice, "adapter": adapter, "instructions": instructions, "segments": segments}
        request = SynthesisRequest(**said.request_text, **knobs, **trace.ids, **body.knobs())  # type: ignore[arg-type]
        return request, output, [*ignored, *said.ignored]

    async def marked(
        self,
        text: str,
        field: str,
        caller: Principal,
        lexicons: Sequence[str] | None = None,
        turns: bool = False,
        rewrite: Rewriter | None = None,
    ) -> Marked:
        """The text as the model speaks it: SSML, or a dialogue's ``turns``, as spans in saved voices the caller may
        use (``markup.py``), with the ``lexicons`` it names (ids or names) applied, or ``rewrite``, their rewrite
        built already (a job's items share one per distinct list)."""
        if rewrite is None:
            rewrite = await self.rewriter(lexicons or (), caller)
        voice = functools.partial(self._voice_for, caller)
        read = markup.dialogue if turns else markup.marked
        return await read(text, field, self._limits.ssml, voice, rewrite or None)

    async def lexicon_ids(self, lexicons: Sequence[str], caller: Principal) -> tuple[str, ...]:
        """The ids of the ``lexicons`` named (ids or names the caller may use), checked as a request's are."""
        found = await self._rewriters.found(lexicons, caller, self._limits.max_request_lexicons)
        return tuple(lexicon.lexicon_id for lexicon in found)

    async def rewriter(self, lexicons: Sequence[str], caller: Principal) -> Rewriter:
        """The ``lexicons`` named (ids or names the caller may use) as one rewrite of a text."""
        return await self._rewriters.of(lexicons, caller, self._limits.max_request_lexicons)

    async def _voice_for(self, caller: Principal, name: str, field: str) -> Voice:
        return await self.voice(name, field, caller)

    async def _openai_voice(self, name: str, config: OpenAIRouteConfig, caller: Principal) -> Voice | None:
        """The saved voice OpenAI's ``voice`` speaks with: a mapped OpenAI name's (a shared voice: no tenant can
        change what a configured name speaks with), none for an unmapped one (the model's default), else the
        caller's by name."""
        key = name.strip().casefold()
        if key in config.voices:
            try:
                return await asyncio.to_thread(self.voices.find_shared, config.voices[key], "voice")
            except NotFound:
                raise NotFound(
                    f"voice {name!r} is mapped to the shared voice {config.voices[key]!r}, which does not exist",
                    "voice",
                ) from None
        return None if key in OPENAI_VOICES else await self.voice(name, "voice", caller)

    async def _openai_instructions(
        self, body: SpeechRequest, info: ModelInfo, strict: bool
    ) -> tuple[str | None, list[str]]:
        """The instructions the model gets, and the fields ignored because it cannot follow them."""
        fields = {"instructions": body.instructions}
        if capabilities.unsupported(info, fields) is None:
            return body.instructions, []
        if strict:
            await self._client.require(info.name, fields)
        return None, ["instructions"]

    async def from_init(
        self, init: Init, trace: RequestTrace, caller: Principal
    ) -> tuple[SynthesisRequest, Output, Callable[[str], str]]:
        """What a WebSocket's ``init`` asks of every sentence of the socket: the request each sentence fills in
        (its ``text``, its ids, the first sentence's voice as ``prompt``), how the audio is encoded, and what a
        sentence becomes before the model says it (the socket's lexicons, else its voice's). A sentence the
        socket cut is one segment at the model, never split again (``serve_app/text/sentences.py``)."""
        model = self._client.resolve(init.model)
        instructions = optional_text(init.instructions)
        await self._client.require(model, {"instructions": instructions})  # VoxCPM2: a voice designed, or styled
        voice = await self.voice(init.voice_id, "voice_id", caller) if init.voice_id else None
        adapter = await self.adapter(init.adapter, voice, model, caller)
        output = await self.output(model, init.audio_format, init.sample_rate, trace)
        knobs = {**init.knobs(), "instructions": instructions, "adapter": adapter}
        rewrite = await self.rewriter(_lexicons(init.lexicon_names(), voice), caller)
        return SynthesisRequest(text="", voice=voice, one_sentence=True, **knobs), output, rewrite or str

    async def output(
        self, model: str, fmt: AudioFormat, rate: int | None, trace: RequestTrace, speed: float = 1.0
    ) -> Output:
        return outputs.checked(await self._client.model_info(model), fmt, rate, trace, speed)

    async def upload(self, upload: UploadFile | None, field: str) -> bytes:
        """An uploaded file's bytes (none: empty), refused past the upload bound before more than that is read."""
        if upload is None:
            return b""
        limit = self._limits.max_prompt_audio_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"{field} is larger than {limit} bytes", field)
        if not data and upload.filename:
            raise InvalidField(f"{field} is an empty file", field)
        return data

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


def _lexicons(named: list[str], voice: Voice | None) -> Sequence[str]:
    """The lexicons a request names, else its saved voice's."""
    return named or (tuple(voice.lexicon_ids) if voice is not None else ())
