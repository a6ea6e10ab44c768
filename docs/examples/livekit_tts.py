"""livekit-agents speaking through VoxCPM Serve, with word timings for its synchronized transcripts.

livekit-agents shows an agent's words as they are heard when its TTS passes word timings on (its "aligned
transcripts": ``TTSCapabilities(aligned_transcript=True)``, ``AudioEmitter.push_timed_transcript``). This TTS
speaks each text over VoxCPM Serve's WebSocket with ``timestamps: "word"``: audio frames go to livekit as they
arrive, each sentence's word times right after (they come before its last frame). Non-streaming in livekit's
sense: an ``AgentSession`` wraps it in its ``StreamAdapter``, which hands it a sentence at a time.

    pip install livekit-agents websockets
    tts = VoxCPMTTS(url="ws://localhost:7861", api_key="...")
    session = AgentSession(tts=tts, use_tts_aligned_transcript=True, ...)
"""

from __future__ import annotations

import json
import uuid

import websockets
from livekit.agents import APIConnectionError, APIConnectOptions, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, TimedString


class VoxCPMTTS(tts.TTS):
    def __init__(
        self,
        *,
        url: str = "ws://localhost:7861",
        api_key: str | None = None,
        voice_id: str | None = None,
        adapter: str | None = None,
        sample_rate: int = 24000,
        **settings: object,  # more init fields: model, cfg_value, seed, ...
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False, aligned_transcript=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.url = url.rstrip("/") + "/api/tts/ws"
        self.api_key = api_key
        self.init = {"type": "init", "sample_rate": sample_rate, "timestamps": "word"}
        self.init |= {key: value for key, value in (("voice_id", voice_id), ("adapter", adapter)) if value}
        self.init |= settings

    def synthesize(self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> VoxCPMStream:
        return VoxCPMStream(tts=self, input_text=text, conn_options=conn_options)


class VoxCPMStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        voxcpm: VoxCPMTTS = self._tts  # type: ignore[assignment]
        output_emitter.initialize(
            request_id=uuid.uuid4().hex, sample_rate=voxcpm.sample_rate, num_channels=1, mime_type="audio/pcm"
        )
        headers = {"Authorization": f"Bearer {voxcpm.api_key}"} if voxcpm.api_key else None
        async with websockets.connect(voxcpm.url, additional_headers=headers) as ws:
            await ws.send(json.dumps(voxcpm.init))
            await ws.send(json.dumps({"type": "text", "text": self._input_text}))
            await ws.send(json.dumps({"type": "end"}))
            async for message in ws:
                if isinstance(message, bytes):  # PCM s16le at the rate asked for
                    output_emitter.push(message)
                    continue
                event = json.loads(message)
                if event["type"] == "timestamps":  # seconds from the start of this text's audio
                    output_emitter.push_timed_transcript(
                        [
                            TimedString(spaced(w["word"]), start_time=w["start_s"], end_time=w["end_s"])
                            for w in event["words"]
                        ]
                    )
                elif event["type"] == "error" and event.get("fatal", True):
                    raise APIConnectionError(event["message"])
                elif event["type"] in ("done", "error"):
                    break
        output_emitter.flush()


def spaced(word: str) -> str:
    """A word as a transcript joins it: a space after words of spaced scripts, none after CJK characters."""
    return word + " " if word[-1].isascii() else word
