"""The tools people point at an OpenAI-compatible TTS server, against the real stack.

livekit-agents' OpenAI plugin runs as itself. pipecat (pipecat-ai 1.14) would downgrade protobuf,
soundfile and soxr in the service's environment, so its OpenAITTSService request is replayed with
the same OpenAI SDK call it makes. Open WebUI and Home Assistant are applications, not libraries:
their requests are replayed as their source sends them (cited per test).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import urllib.request

import aiohttp
import httpx2
import pytest
from livekit.agents.tts.tts import USERDATA_TIMED_TRANSCRIPT
from livekit.plugins import openai as livekit_openai
from openai import AsyncOpenAI

from serve_app.audio.codecs import AudioFormat
from tests.conftest import REPO, TINY_V15_STEP_FRAMES, decode

TEXT = "你好，这是流式语音合成。"
MAX_LEN = 8  # generation steps: every answer below is this many steps of the tiny model
MODEL_SECONDS = MAX_LEN * TINY_V15_STEP_FRAMES / 44100


def test_pipecat_openai_tts_service(url: str) -> None:
    """pipecat's ``OpenAITTSService.run_tts`` (src/pipecat/services/openai/tts.py): ``AsyncOpenAI(api_key,
    base_url).audio.speech.with_streaming_response.create(input, model, voice=VALID_VOICES[voice],
    response_format="pcm", instructions?, speed?)``, read with ``iter_bytes(chunk_size)`` and played as
    24 kHz mono PCM16. Its voice must be one of OpenAI's names (the voice map makes it a saved one), and
    its own example sets speed 2.0."""

    async def run_tts() -> tuple[int, list[bytes]]:
        client = AsyncOpenAI(api_key="not-needed-locally", base_url=f"{url}/v1")
        params = {"input": TEXT, "model": "gpt-4o-mini-tts", "voice": "alloy", "response_format": "pcm", "speed": 2.0}
        async with client.audio.speech.with_streaming_response.create(
            **params,  # type: ignore[arg-type]
            extra_body={"max_len": MAX_LEN},
        ) as response:
            return response.status_code, [chunk async for chunk in response.iter_bytes(4800) if chunk]

    status, chunks = asyncio.run(run_tts())
    assert status == 200
    assert sum(map(len, chunks)) // 2 == pytest.approx(MODEL_SECONDS / 2.0 * 24000, abs=2)


class _CappedGeneration(httpx2.AsyncHTTPTransport):
    """Adds ``max_len`` to the speech body (random weights never stop on their own); everything the
    plugin sends is otherwise left as it is."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/audio/speech"):
            body = {**json.loads(request.content), "max_len": MAX_LEN}
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx2.Request(request.method, request.url, headers=headers, json=body)
        return await super().handle_async_request(request)


@pytest.mark.parametrize("model,fmt", [("gpt-4o-mini-tts", "mp3"), ("tts-1", "pcm")])
def test_livekit_openai_tts_plugin(url: str, model: str, fmt: str) -> None:
    """livekit-agents' ``openai.TTS``, itself: SSE for gpt-4o-mini-tts, raw audio for tts-1, decoded by
    livekit into 24 kHz frames; ``update_options(speed=...)`` as an agent changes its pace."""

    async def synthesize() -> tuple[int, int]:
        client = AsyncOpenAI(
            base_url=f"{url}/v1",
            api_key="not-needed-locally",
            http_client=httpx2.AsyncClient(transport=_CappedGeneration()),
        )
        tts = livekit_openai.TTS(model=model, voice="Alloy", response_format=fmt, client=client)
        tts.update_options(speed=1.25)
        try:
            async with tts.synthesize(TEXT) as stream:
                frames = [event.frame async for event in stream]
        finally:
            await tts.aclose()
            await client.close()
        return sum(f.samples_per_channel for f in frames), frames[0].sample_rate

    samples, rate = asyncio.run(synthesize())
    assert rate == 24000
    assert samples / rate == pytest.approx(MODEL_SECONDS / 1.25, abs=0.06)


def test_livekit_tts_with_word_timings(url: str) -> None:
    """docs/examples/livekit_tts.py, our livekit TTS over the WebSocket, run by livekit's own ChunkedStream and
    AudioEmitter: 24 kHz frames, and each word's timing on the frames (livekit's aligned transcripts), every
    word once, in order, inside the audio."""
    spec = importlib.util.spec_from_file_location("livekit_tts", REPO / "docs" / "examples" / "livekit_tts.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text = "Hello there. 你好世界。"

    async def synthesize() -> tuple[list, list]:
        tts = example.VoxCPMTTS(url=url.replace("http://", "ws://"), max_len=MAX_LEN)
        try:
            async with tts.synthesize(text) as stream:
                frames = [event.frame async for event in stream]
        finally:
            await tts.aclose()
        return frames, [t for f in frames for t in f.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]

    frames, timed = asyncio.run(synthesize())
    seconds = sum(f.samples_per_channel for f in frames) / 24000
    assert frames[0].sample_rate == 24000 and seconds > 0
    assert "".join(timed).replace(" ", "") == text.replace(" ", "")
    assert [str(t) for t in timed[:2]] == ["Hello ", "there. "] and str(timed[2]) == "你"
    assert all(0 <= t.start_time <= t.end_time <= seconds + 1e-3 for t in timed)
    assert all(b.start_time >= a.start_time for a, b in itertools.pairwise(timed))


def test_open_webui(url: str) -> None:
    """Open WebUI (backend/open_webui/routers/audio.py): with a custom OpenAI base URL it fills its menus
    from ``GET {base}/audio/models`` (``data.get('models')``) and ``GET {base}/audio/voices``
    (``{voice['id']: voice['name']}``), then posts the browser's ``{input, voice}`` with ``model`` set to
    its configured TTS model and the admin's TTS_OPENAI_PARAMS merged in (e.g. ``{"speed": 1.25}``),
    reads the whole mp3, and shows ``res['error']['message']`` on failure."""
    base = f"{url}/v1"

    async def as_open_webui() -> tuple[list[dict], dict[str, str], bytes, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/audio/models") as response:
                response.raise_for_status()
                models = (await response.json()).get("models", [])
            async with session.get(f"{base}/audio/voices") as response:
                response.raise_for_status()
                voices = {voice["id"]: voice["name"] for voice in (await response.json()).get("voices", [])}
            payload = {"input": TEXT, "voice": "alloy", "model": "tts-1", **{"speed": 1.25, "max_len": MAX_LEN}}
            async with session.post(f"{base}/audio/speech", json=payload) as response:
                response.raise_for_status()
                audio = await response.read()
            async with session.post(f"{base}/audio/speech", json={**payload, "voice": "nobody"}) as response:
                failure = (await response.json())["error"].get("message", "")
        return models, voices, audio, failure

    models, voices, audio, failure = asyncio.run(as_open_webui())
    assert "tts-1" in {m["id"] for m in models}
    assert voices["alloy"] == "alloy"
    _, seconds = decode(audio, AudioFormat.MP3, 44100)
    assert seconds == pytest.approx(MODEL_SECONDS / 1.25, abs=0.06)
    assert "nobody" in failure


@pytest.mark.parametrize("instructions", ["None", "Speak like a friendly butler", ""])
def test_home_assistant_openai_tts(url: str, instructions: str) -> None:
    """Home Assistant's OpenAI TTS integration (sfortis/openai_tts,
    custom_components/openai_tts/openaitts_engine.py): ``urllib`` POST of
    ``json.dumps({model, input, voice, response_format: "mp3", speed, instructions}).encode()`` with
    ``User-Agent: HomeAssistant-OpenAI-TTS``, ``instructions`` on every request (its prompt, the string
    "None" when none is stored); VoxCPM 1.x cannot follow them, so they are ignored and named."""
    payload = {
        "model": "gpt-4o-mini-tts",
        "input": TEXT,
        "voice": "shimmer",
        "response_format": "mp3",
        "speed": 1.0,
        "instructions": instructions,
        "max_len": MAX_LEN,  # its extra_payload option merges keys like this one
    }
    request = urllib.request.Request(
        f"{url}/v1/audio/speech",
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "HomeAssistant-OpenAI-TTS"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        audio, ignored = response.read(), response.headers.get("X-Ignored-Fields")
    _, seconds = decode(audio, AudioFormat.MP3, 44100)
    assert seconds == pytest.approx(MODEL_SECONDS, abs=0.06)
    assert ignored == ("instructions" if instructions.strip() not in ("", "None") else None)


def test_home_assistant_streams_opus(url: str) -> None:
    """The same integration's ``async_get_tts_stream``: aiohttp POST ``json=payload`` with
    ``response_format: "opus"``, read in chunks as they come."""

    async def stream() -> bytes:
        payload = {"model": "tts-1", "input": TEXT, "voice": "nova", "response_format": "opus", "speed": 1.5}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/audio/speech", json={**payload, "max_len": MAX_LEN}) as response:
                response.raise_for_status()
                return b"".join([chunk async for chunk in response.content.iter_chunked(4096)])

    rate, seconds = decode(asyncio.run(stream()), AudioFormat.OPUS, 48000)
    assert rate == 48000 and seconds == pytest.approx(MODEL_SECONDS / 1.5, abs=0.06)
