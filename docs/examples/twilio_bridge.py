"""A phone call speaking through VoxCPM Serve: a bridge between Twilio's Media Streams and our WebSocket.

Twilio connects to this server (TwiML ``<Connect><Stream url="wss://YOUR-HOST/twilio"/></Connect>``) and sends
``connected``, ``start`` (with the ``streamSid``), the caller's audio as ``media`` and finally ``stop``. The
bridge opens one conversation with VoxCPM Serve with ``encoding: "ulaw"`` (8 kHz G.711, what Twilio plays),
so every binary frame we send is forwarded as it is, base64-encoded in a ``media`` message: no transcoding.
Text to speak comes from your agent (here: ``reply_to``, a stand-in); when your voice-activity detection hears
the caller talk over it (``caller_speaks``, a stand-in), the bridge sends ``cancel`` on our side and ``clear`` on
Twilio's, which drops the audio Twilio still holds. A ``mark`` after each sentence comes
back from Twilio once the caller has heard it.

    pip install websockets
    VOXCPM_SERVE_URL=ws://localhost:7861 VOXCPM_SERVE_API_KEY=... python twilio_bridge.py   # listens on :8080
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator

import websockets
from websockets.asyncio.server import ServerConnection

VOXCPM = os.environ.get("VOXCPM_SERVE_URL", "ws://localhost:7861") + "/api/tts/ws"
API_KEY = os.environ.get("VOXCPM_SERVE_API_KEY")
VOICE: dict = {}  # more init fields: voice_id, adapter, model, seed, ...


async def reply_to(call: dict) -> AsyncIterator[str]:
    """Your agent: text as a language model writes it (here, a greeting in pieces)."""
    for piece in ["Hello! ", "Thanks for calling. ", "How can I help you today?"]:
        yield piece


def caller_speaks(media: dict) -> bool:
    """Your voice-activity detection on the caller's audio (base64 mu-law in ``media["payload"]``)."""
    return False


async def bridge(twilio: ServerConnection) -> None:
    """One call: Twilio's socket on one side, a VoxCPM Serve conversation on the other."""
    stream_sid = None
    async for message in twilio:  # connected, then start
        event = json.loads(message)
        if event["event"] == "start":
            stream_sid = event["start"]["streamSid"]
            break
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else None
    async with websockets.connect(VOXCPM, additional_headers=headers) as voxcpm:
        await voxcpm.send(json.dumps({"type": "init", "encoding": "ulaw", **VOICE}))  # 8 kHz unless sample_rate says
        ready = json.loads(await voxcpm.recv())
        assert ready["type"] == "ready" and ready["encoding"] == "ulaw", ready

        async def speak() -> None:
            async for text in reply_to(event):
                await voxcpm.send(json.dumps({"type": "text", "text": text}))
            await voxcpm.send(json.dumps({"type": "end"}))

        async def play() -> None:
            async for message in voxcpm:
                if isinstance(message, bytes):  # G.711 mu-law at 8 kHz: Twilio's own format
                    media = {"payload": base64.b64encode(message).decode()}
                    await twilio.send(json.dumps({"event": "media", "streamSid": stream_sid, "media": media}))
                    continue
                event_ = json.loads(message)
                if event_["type"] == "segment_end":  # Twilio echoes the mark once the caller heard the sentence
                    mark = {"name": f"segment-{event_['index']}"}
                    await twilio.send(json.dumps({"event": "mark", "streamSid": stream_sid, "mark": mark}))
                elif event_["type"] in ("done", "error"):
                    return

        async def listen() -> None:
            async for message in twilio:  # the caller's audio (to your speech recognizer), marks, stop
                event_ = json.loads(message)
                if event_["event"] == "stop":
                    return
                if event_["event"] == "media" and caller_speaks(event_["media"]):  # barge-in
                    await voxcpm.send(json.dumps({"type": "cancel"}))
                    await twilio.send(json.dumps({"event": "clear", "streamSid": stream_sid}))

        listening = asyncio.create_task(listen())
        await asyncio.gather(speak(), play())
        listening.cancel()


async def main(port: int = 8080) -> None:
    async with websockets.serve(bridge, "0.0.0.0", port):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
