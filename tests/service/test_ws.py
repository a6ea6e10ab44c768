"""``WebSocket /api/tts/ws`` through the real stack with a real ``websockets`` client: the protocol,
barge-in, and every misuse refused with the contract's close codes and nothing left generating."""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import (
    LOCAL_CONFIG,
    REPO,
    TINY_V2_STEP_FRAMES,
    TINY_V15_STEP_FRAMES,
    V2_MODEL,
    Service,
    extra_app,
    in_flight,
    wait_until,
)

KEY = "ws-test-key"
STEPS = 3  # generation steps per sentence: the tiny model always runs to max_len
LIMITS = {
    "init_timeout_s": 1.5,
    "idle_timeout_s": 2.0,
    "max_messages_per_s": 30,
    "max_buffered_chars": 120,
    "max_message_bytes": 2000,
    "max_audio_ahead_s": 1.0,
    "max_contexts": 3,
}


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/api/tts/ws"


@pytest.fixture(scope="module")
def guarded(service: Service, checkpoints: Path) -> Iterator[str]:
    """An app with an API key and short limits, so every misuse is quick to provoke."""
    args = {"access": {"api_keys": [KEY]}, "websocket": LIMITS}
    small = {"VoxCPMModel": {"max_ongoing_requests": 1, "max_queued_requests": 1}}  # easy to fill
    with extra_app(service, checkpoints, "wsguarded", args_overrides=args, deployments=small) as url:
        yield ws_url(url)


def dial(url: str, **options: object) -> ClientConnection:
    """An open connection that the test closes, or the server does (websockets wants it entered)."""
    return connect(url, open_timeout=30, **options).__enter__()  # type: ignore[arg-type]


def open_ws(url: str, key: str | None = KEY, **init: object) -> ClientConnection:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    ws = dial(url, additional_headers=headers, max_size=None)
    if init is not None:
        ws.send(json.dumps({"type": "init", "max_len": STEPS, **init}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready", ready
    return ws


def events_until(ws: ClientConnection, last: str, timeout_s: float = 60) -> tuple[list[dict], list[bytes]]:
    """Every JSON event (binary frames as {"type": "audio", "bytes": n}) up to one of type ``last``."""
    events: list[dict] = []
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, bytes):
            frames.append(message)
            events.append({"type": "audio", "bytes": len(message)})
            continue
        events.append(json.loads(message))
        if events[-1]["type"] == last:
            return events, frames


def closed_with(ws: ClientConnection, timeout_s: float = 30) -> tuple[int, list[dict]]:
    """The close code the server sent, and the JSON events before it."""
    events = []
    with pytest.raises(ConnectionClosed) as closed:
        deadline = time.monotonic() + timeout_s
        while True:
            message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            if isinstance(message, str):
                events.append(json.loads(message))
    assert closed.value.rcvd is not None, "the server did not send a close frame"
    return closed.value.rcvd.code, events


@pytest.fixture(scope="module")
def plain(url: str) -> str:
    return ws_url(url)


class TestProtocol:
    def test_sentences_are_spoken_as_text_arrives(self, plain: str) -> None:
        with open_ws(plain, key=None) as ws:
            for token in ["Hello", " there", ".", " How", " are", " you", "?"]:
                ws.send(json.dumps({"type": "text", "text": token}))
            first, _ = events_until(ws, "segment_end")  # "Hello there." is out before `end`
            ws.send(json.dumps({"type": "end"}))
            rest, _ = events_until(ws, "done")
        events = first + rest
        segments = [e for e in events if e["type"] == "segment"]
        assert [s["text"] for s in segments] == ["Hello there.", "How are you?"]
        position = 0
        for event in events:
            if event["type"] == "segment":
                assert event["start_sample"] == position and event["context_id"] == "0"
            elif event["type"] == "audio":
                position += event["bytes"] // 2
            elif event["type"] == "segment_end":
                assert event["end_sample"] == position
        assert position == 2 * STEPS * TINY_V15_STEP_FRAMES
        assert events[-1] == {"type": "done", "context_id": "0", "total_samples": position}

    @pytest.mark.parametrize(("encoding", "subtype"), [("ulaw", "ULAW"), ("alaw", "ALAW")])
    def test_g711_frames_for_phone_lines(self, plain: str, encoding: str, subtype: str) -> None:
        """init.encoding ulaw / alaw: raw G.711 at 8 kHz, one byte a sample, so sample positions count bytes;
        a second decoder (libsndfile's) reads it."""
        with open_ws(plain, key=None, encoding=encoding) as ws:
            ws.send(json.dumps({"type": "text", "text": "Hello there."}))
            ws.send(json.dumps({"type": "end"}))
            events, frames = events_until(ws, "done")
        audio = b"".join(frames)
        assert events[-1]["total_samples"] == len(audio) == round(STEPS * TINY_V15_STEP_FRAMES * 8000 / 44100)
        decoded, _ = sf.read(io.BytesIO(audio), format="RAW", subtype=subtype, samplerate=8000, channels=1)
        assert len(decoded) == len(audio) and np.isfinite(decoded).all()

    def test_the_twilio_bridge_example_forwards_g711_as_twilio_plays_it(
        self, plain: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """docs/examples/twilio_bridge.py between this test, playing Twilio's side of a Media Stream, and the
        service: the greeting comes back as Twilio's media messages, a mark after each sentence."""
        spec = importlib.util.spec_from_file_location("twilio_bridge", REPO / "docs" / "examples" / "twilio_bridge.py")
        assert spec is not None and spec.loader is not None
        bridge = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bridge)
        monkeypatch.setattr(bridge, "VOXCPM", plain)
        monkeypatch.setattr(bridge, "VOICE", {"max_len": STEPS})

        async def call() -> tuple[bytes, list[str]]:
            async with websockets.serve(bridge.bridge, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                async with websockets.connect(f"ws://127.0.0.1:{port}") as twilio:
                    await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
                    start = {"streamSid": "MZ1", "callSid": "CA1", "mediaFormat": media_format}
                    await twilio.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": start}))
                    payload, marks = b"", []
                    async for message in twilio:  # until the bridge hangs up
                        event = json.loads(message)
                        assert event["streamSid"] == "MZ1"
                        if event["event"] == "media":
                            payload += base64.b64decode(event["media"]["payload"])
                        else:
                            marks.append(event["mark"]["name"])
            return payload, marks

        payload, marks = asyncio.run(call())
        assert marks == ["segment-0", "segment-1", "segment-2"]  # "Hello!", "Thanks for calling.", "How can I ..."
        assert len(payload) == pytest.approx(3 * STEPS * TINY_V15_STEP_FRAMES * 8000 / 44100, abs=3)

    def test_ready_states_the_format_and_limits(self, guarded: str) -> None:
        ws = dial(guarded, additional_headers={"Authorization": f"Bearer {KEY}"})
        with ws:
            ws.send(json.dumps({"type": "init", "sample_rate": 16000, "max_wait_ms": 200}))
            ready = json.loads(ws.recv(timeout=30))
        assert ready["sample_rate"] == 16000 and ready["encoding"] == "pcm_s16le"
        assert ready["limits"]["idle_timeout_s"] == LIMITS["idle_timeout_s"]
        assert ready["limits"]["max_wait_ms"] == 200
        assert ready["limits"]["max_contexts"] == LIMITS["max_contexts"]
        with dial(guarded, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            ws.send(json.dumps({"type": "init", "encoding": "ulaw"}))
            telephony = json.loads(ws.recv(timeout=30))
        assert telephony["sample_rate"] == 8000 and telephony["encoding"] == "ulaw"

    def test_chinese_is_cut_without_spaces_and_keeps_one_voice(self, plain: str) -> None:
        with open_ws(plain, key=None) as ws:
            for token in ["你好", "。", "今天", "天气", "很好", "！", "我们"]:
                ws.send(json.dumps({"type": "text", "context_id": "zh", "text": token}))
            events, _ = events_until(ws, "segment_end")
            events2, _ = events_until(ws, "segment_end")
            ws.send(json.dumps({"type": "end", "context_id": "zh"}))
            events3, _ = events_until(ws, "done")
        texts = [e["text"] for e in events + events2 + events3 if e["type"] == "segment"]
        assert texts == ["你好。", "今天天气很好！", "我们"]

    def test_max_wait_speaks_a_slow_clause_without_flush(self, plain: str) -> None:
        with open_ws(plain, key=None, max_wait_ms=300) as ws:
            ws.send(json.dumps({"type": "text", "text": "one two three, four"}))
            events, _ = events_until(ws, "segment", timeout_s=30)
            assert events[-1]["text"] == "one two three, four"  # the writer paused: all of it
            ws.send(json.dumps({"type": "cancel"}))
            events_until(ws, "cancelled")

    def test_words_left_after_a_sentence_are_spoken_once_the_speaker_is_idle(self, plain: str) -> None:
        """max_wait_ms counts while nothing is spoken: the tail of an answer is not left waiting."""
        with open_ws(plain, key=None, max_wait_ms=200) as ws:
            ws.send(json.dumps({"type": "text", "text": "A first sentence. and then a few more words"}))
            events, _ = events_until(ws, "segment_end")
            tail, _ = events_until(ws, "segment_end", timeout_s=30)  # no further message is sent
        assert [e["text"] for e in events + tail if e["type"] == "segment"] == [
            "A first sentence.",
            "and then a few more words",
        ]

    def test_cancel_stops_audio_and_the_socket_goes_on(self, plain: str, url: str) -> None:
        with open_ws(plain, key=None, max_len=400) as ws:
            ws.send(json.dumps({"type": "text", "context_id": "a", "text": "这是一段很长的话，要说很久。"}))
            events_until(ws, "segment")
            received = len(ws.recv(timeout=30))
            ws.send(json.dumps({"type": "cancel", "context_id": "a"}))
            events, _ = events_until(ws, "cancelled")
            received += sum(e.get("bytes", 0) for e in events)
            assert events[-1] == {"type": "cancelled", "context_id": "a", "sent_samples": received // 2}
            assert received < 400 * TINY_V15_STEP_FRAMES * 2, "the whole sentence was sent"
            ws.send(json.dumps({"type": "text", "context_id": "b", "text": "下一句。"}))
            ws.send(json.dumps({"type": "end", "context_id": "b"}))
            after, _ = events_until(ws, "done")
            assert all(e.get("context_id", "b") == "b" for e in after), after
            assert wait_until(lambda: in_flight(url) == 0, 15)


class TestVoiceDesign:
    """init.instructions: a VoxCPM2 model designs (or styles) the voice from them, and every sentence of a
    context keeps the one voice; a model that cannot take them refuses them, naming the field."""

    def test_a_voxcpm2_model_speaks_a_described_voice(self, service: Service) -> None:
        with open_ws(ws_url(service.multi_url), key=None, model=V2_MODEL, instructions="a calm, deep voice") as ws:
            ws.send(json.dumps({"type": "text", "text": "第一句话。第二句话。"}))
            ws.send(json.dumps({"type": "end"}))
            events, frames = events_until(ws, "done")
        assert [e["text"] for e in events if e["type"] == "segment"] == ["第一句话。", "第二句话。"]
        assert sum(map(len, frames)) == events[-1]["total_samples"] * 2 == 2 * 2 * STEPS * TINY_V2_STEP_FRAMES

    def test_other_models_refuse_instructions(self, plain: str) -> None:
        ws = dial(plain)
        ws.send(json.dumps({"type": "init", "instructions": "a calm voice"}))
        code, events = closed_with(ws)
        assert code == 4400
        assert (events[-1]["code"], events[-1]["field"], events[-1]["fatal"]) == ("bad_request", "instructions", True)


class TestRefusals:
    @pytest.mark.parametrize("key", [None, "wrong"])
    def test_a_bad_key_is_refused_before_the_socket_opens(self, guarded: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        with pytest.raises(InvalidStatus) as refused:
            connect(guarded, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["code"] == "unauthorized"

    def test_browsers_offer_the_key_as_a_subprotocol(self, guarded: str) -> None:
        with connect(guarded, subprotocols=[f"bearer.{KEY}"], open_timeout=30) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == f"bearer.{KEY}"
            ws.send(json.dumps({"type": "init"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"

    def test_no_init_in_time(self, guarded: str) -> None:
        ws = dial(guarded, additional_headers={"Authorization": f"Bearer {KEY}"})
        code, events = closed_with(ws)
        assert code == 4408 and events[-1]["type"] == "error" and events[-1]["fatal"] is True

    @pytest.mark.parametrize(
        ("frame", "field"),
        [
            ("not json", None),
            (json.dumps({"type": "sing"}), "type"),
            (json.dumps({"type": "text", "text": "hi"}), "type"),  # before init
            (json.dumps({"type": "init", "cfg_value": 9}), "cfg_value"),
            (json.dumps({"type": "init", "voice_id": "nobody"}), "voice_id"),
            (json.dumps({"type": "init", "encoding": "mp3"}), "encoding"),
            (b"\x00\x01", None),
        ],
    )
    def test_bad_first_messages_close_4400(self, guarded: str, frame: str | bytes, field: str | None) -> None:
        ws = dial(guarded, additional_headers={"Authorization": f"Bearer {KEY}"})
        ws.send(frame)
        code, events = closed_with(ws)
        assert code == 4400
        assert events[-1]["type"] == "error" and events[-1]["fatal"] is True and events[-1].get("field") == field

    def test_unknown_type_and_oversized_frames_after_init(self, guarded: str) -> None:
        for frame in [json.dumps({"type": "speak"}), json.dumps({"type": "text", "text": "x" * 3000}), b"pcm"]:
            ws = open_ws(guarded)
            ws.send(frame)
            code, events = closed_with(ws)
            assert code == 4400 and events[-1]["type"] == "error", (frame, events)

    def test_text_past_the_buffer_limit_is_refused_not_fatal(self, guarded: str) -> None:
        with open_ws(guarded) as ws:
            ws.send(json.dumps({"type": "text", "text": "a" * 100}))
            ws.send(json.dumps({"type": "text", "text": "b" * 100}))
            events, _ = events_until(ws, "error")
            assert events[-1]["code"] == "payload_too_large" and events[-1]["fatal"] is False
            assert events[-1]["field"] == "text"
            ws.send(json.dumps({"type": "cancel"}))
            events_until(ws, "cancelled")

    def test_idle_past_the_timeout_closes_4408(self, guarded: str) -> None:
        ws = open_ws(guarded)
        started = time.monotonic()
        code, _ = closed_with(ws)
        assert code == 4408 and time.monotonic() - started >= LIMITS["idle_timeout_s"] - 0.2

    def test_too_many_messages_close_4429(self, guarded: str) -> None:
        ws = open_ws(guarded)
        for _ in range(60):
            ws.send(json.dumps({"type": "text", "text": ""}))
        code, events = closed_with(ws)
        assert code == 4429 and events[-1]["code"] == "rate_limited"


def send_paced(ws: ClientConnection, **message: object) -> None:
    """A message, sent no faster than the guarded app's rate limit allows."""
    time.sleep(1.2 / LIMITS["max_messages_per_s"])
    ws.send(json.dumps(message))


class TestContexts:
    """What one socket can make the service keep: at most max_contexts contexts open, none for empty
    text or unknown ids, none once done, cancelled or failed (each context cost memory and scan work,
    and a client could open one per message)."""

    def test_open_contexts_are_bounded_and_ending_or_cancelling_one_makes_room(self, guarded: str) -> None:
        with open_ws(guarded) as ws:
            for context_id in "abc":  # too few words for max_wait: they stay open, unspoken
                send_paced(ws, type="text", context_id=context_id, text="one")
            send_paced(ws, type="text", context_id="d", text="four")
            error = events_until(ws, "error")[0][-1]
            assert error["code"] == "rate_limited" and error["fatal"] is False
            assert error["field"] == "context_id" and error["context_id"] == "d"
            message = error["message"]
            assert f"at most {LIMITS['max_contexts']} contexts" in message and "end or cancel" in message
            send_paced(ws, type="text", context_id="a", text=" more")  # an open context takes text still
            send_paced(ws, type="cancel", context_id="a")
            assert events_until(ws, "cancelled")[0] == [{"type": "cancelled", "context_id": "a", "sent_samples": 0}]
            send_paced(ws, type="text", context_id="d", text="four")  # the room a cancel made
            send_paced(ws, type="end", context_id="b")
            events, _ = events_until(ws, "done")
            assert events[-1]["context_id"] == "b" and not [e for e in events if e["type"] == "error"]
            send_paced(ws, type="text", context_id="e", text="five")  # the room an end made
            for context_id in "cde":
                send_paced(ws, type="end", context_id=context_id)
                events, _ = events_until(ws, "done")
                assert events[-1]["context_id"] == context_id and events[-1]["total_samples"] > 0
                assert not [e for e in events if e["type"] == "error"], events

    def test_empty_text_flush_end_and_cancel_open_no_context(self, guarded: str) -> None:
        with open_ws(guarded) as ws:
            for n in range(30):  # ten times max_contexts of ids, none of them given text
                send_paced(ws, type="text", context_id=f"empty{n}", text="\x00" if n % 2 else "")
            for n in range(5):
                send_paced(ws, type="flush", context_id=f"flushed{n}")
            send_paced(ws, type="end", context_id="unknown")
            assert events_until(ws, "done")[0] == [{"type": "done", "context_id": "unknown", "total_samples": 0}]
            send_paced(ws, type="cancel", context_id="unknown")
            cancelled = {"type": "cancelled", "context_id": "unknown", "sent_samples": 0}
            assert events_until(ws, "cancelled")[0] == [cancelled]
            for context_id in "abc":
                send_paced(ws, type="text", context_id=context_id, text="one")
            send_paced(ws, type="text", context_id="d", text="four")
            error = events_until(ws, "error")[0][-1]  # the limit is where it was: nothing else was opened
            assert error["context_id"] == "d" and error["fatal"] is False

    def test_finished_contexts_are_forgotten(self, guarded: str) -> None:
        """Many more contexts than max_contexts, one after another: each done or cancelled frees its room."""
        with open_ws(guarded) as ws:
            for n in range(3 * LIMITS["max_contexts"]):
                send_paced(ws, type="text", context_id=f"said{n}", text="好。")
                send_paced(ws, type="end", context_id=f"said{n}")
                events, _ = events_until(ws, "done")
                assert not [e for e in events if e["type"] == "error"], events
                send_paced(ws, type="text", context_id=f"dropped{n}", text="one")
                send_paced(ws, type="cancel", context_id=f"dropped{n}")
                events, _ = events_until(ws, "cancelled")
                assert not [e for e in events if e["type"] == "error"], events


def done_or_refused(ws: ClientConnection) -> list[dict]:
    """The JSON events until a context is done or refused (a refused context ends with its error)."""
    events: list[dict] = []
    while not events or events[-1]["type"] not in ("done", "error"):
        message = ws.recv(timeout=60)
        if isinstance(message, str):
            events.append(json.loads(message))
    return events


class TestLoadShedding:
    def test_a_sentence_refused_for_load_is_an_error_not_a_dropped_socket(self, guarded: str) -> None:
        http_url = guarded.replace("ws://", "http://").removesuffix("/api/tts/ws")
        with open_ws(guarded) as ws, ThreadPoolExecutor(2) as pool:
            long = {"text": "占住模型。" * 20}
            headers = {"Authorization": f"Bearer {KEY}"}
            post = functools.partial(requests.post, f"{http_url}/api/tts/stream", headers=headers, stream=True)
            holders = [pool.submit(post, data=long) for _ in range(2)]  # one generating, one in the router's queue
            time.sleep(1.5)
            ws.send(json.dumps({"type": "text", "context_id": "busy", "text": "满了吗？"}))
            events, _ = events_until(ws, "error")
            assert events[-1]["code"] == "overloaded" and events[-1]["fatal"] is False
            assert events[-1]["context_id"] == "busy" and events[-1]["retry_after_s"] >= 1
            others = [f"other{n}" for n in range(LIMITS["max_contexts"])]  # the failed context left them room
            for context_id in others:
                send_paced(ws, type="text", context_id=context_id, text="one")
            for context_id in others:
                send_paced(ws, type="cancel", context_id=context_id)
                events, _ = events_until(ws, "cancelled")
                assert [e["type"] for e in events] == ["cancelled"], events
            pool.submit(lambda: [holder.result().close() for holder in holders])  # they hang up, in turn
            for attempt in range(30):  # as a client should: again after retry_after_s
                ws.send(json.dumps({"type": "text", "context_id": f"later{attempt}", "text": "现在好了。"}))
                ws.send(json.dumps({"type": "end", "context_id": f"later{attempt}"}))
                events = done_or_refused(ws)
                if events[-1]["type"] == "done":
                    break
                time.sleep(events[-1]["retry_after_s"])
            assert events[-1]["type"] == "done", events


class TestResources:
    def test_a_vanished_client_stops_its_generation(self, plain: str, url: str) -> None:
        ws = open_ws(plain, key=None, max_len=2000)
        # one sentence long enough to outlast a fresh status report (the replica's, then the ingress's poll)
        ws.send(json.dumps({"type": "text", "text": "这是一段很长的话，" * 12 + "要说很久很久。"}))
        events_until(ws, "segment")
        assert isinstance(ws.recv(timeout=30), bytes)
        assert in_flight(url) == 1
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        ws.socket.close()
        assert wait_until(lambda: in_flight(url) == 0, 15), "the generation went on after the client left"

    def test_a_redeploy_ends_open_sockets_and_frees_the_model(self, service: Service, checkpoints: Path) -> None:
        """An ingress replica being replaced drains for graceful_shutdown_timeout_s; a socket still open
        then ends (the client sees it closed and reconnects), and its generation stops."""
        from ray import serve

        from serve_app.app import from_config_file

        drain = {"TTSIngress": {"graceful_shutdown_timeout_s": 2}}
        with extra_app(service, checkpoints, "wsredeploy", deployments=drain) as url:
            ws = open_ws(ws_url(url), key=None, max_len=2000)
            ws.send(json.dumps({"type": "text", "text": "重新部署的时候还在说话。"}))
            events_until(ws, "segment")
            args = {"voices_dir": str(checkpoints.parent / "voices"), "websocket": {"idle_timeout_s": 30}}
            source = str(checkpoints / "tiny-voxcpm1.5")
            app, _ = from_config_file(LOCAL_CONFIG, 0, drain, args, source=source)
            serve.run(app, name="wsredeploy", route_prefix="/wsredeploy")  # a new ingress config
            with pytest.raises(ConnectionClosed):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    ws.recv(timeout=60)
            assert wait_until(lambda: in_flight(url) == 0, 30), "the generation outlived its socket"
            with open_ws(ws_url(url), key=None) as again:
                again.send(json.dumps({"type": "text", "text": "又来了。"}))
                again.send(json.dumps({"type": "end"}))
                events_until(again, "done")

    def test_a_client_that_does_not_read_is_paced(self, guarded: str) -> None:
        """Audio is not sent further ahead of real time than max_audio_ahead_s plus a sentence."""
        with open_ws(guarded, max_len=20) as ws:
            for n in range(8):
                ws.send(json.dumps({"type": "text", "text": f"句子{n}。"}))
            time.sleep(4)  # not reading
            sent = 0
            while True:
                try:
                    message = ws.recv(timeout=0.5)
                except TimeoutError:
                    break
                if isinstance(message, bytes):
                    sent += len(message) // 2
        sentence_s = 20 * TINY_V15_STEP_FRAMES / 44100
        assert sent / 44100 <= 4 + LIMITS["max_audio_ahead_s"] + 2 * sentence_s + 1


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_configs_let_conversations_end_on_their_own_terms(path: Path) -> None:
    """Serve's proxy cuts a socket request_timeout_s after it opened, and each socket holds one of the
    ingress replica's max_ongoing_requests: a conversation must end (4408) before the first, and the
    socket cap must leave the second room for HTTP requests."""
    import yaml

    from serve_app.config import AppConfig

    documents = list(yaml.safe_load_all(path.read_text()))
    embedded = [d["spec"]["serveConfigV2"] for d in documents if "serveConfigV2" in d.get("spec", {})]
    serve_config = yaml.safe_load(embedded[0]) if embedded else documents[0]
    for app in serve_config["applications"]:
        limits = AppConfig.model_validate(app["args"]).websocket
        assert limits.max_session_s < serve_config["http_options"]["request_timeout_s"]
        ingress = next(d for d in app["deployments"] if d["name"] == "TTSIngress")
        assert limits.max_connections < ingress["max_ongoing_requests"]


class TestCli:
    def run(self, http_url: str, *args: str, stdin: str, key: str | None = None) -> subprocess.CompletedProcess:
        cli = str(Path(sys.executable).with_name("voxcpm-serve"))
        env = {**os.environ, "VOXCPM_SERVE_API_KEY": key or ""}
        command = [cli, "--url", http_url, "say", "--ws", "-", *args]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, env=env)

    def test_say_ws_speaks_stdin_sentence_by_sentence(self, url: str, tmp_path: Path) -> None:
        out = tmp_path / "ws.wav"
        result = self.run(url, "--max-len", "3", "-o", str(out), stdin="你好。世界")
        assert result.returncode == 0, result.stderr
        data, rate = sf.read(out)
        assert rate == 44100 and len(data) == 2 * 3 * TINY_V15_STEP_FRAMES

    def test_say_ws_shows_a_refusal(self, guarded: str) -> None:
        http_url = guarded.replace("ws://", "http://").removesuffix("/api/tts/ws")
        result = self.run(http_url, stdin="hi", key="wrong")
        assert result.returncode == 4 and "HTTP 401" in result.stderr
        refused = self.run(http_url, "--cfg-value", "9", stdin="hi", key=KEY)
        assert refused.returncode == 4 and "cfg_value" in refused.stderr


def test_conversations_are_in_the_metrics(plain: str) -> None:
    """Each sentence is measured like an HTTP stream (route /api/tts/ws), and open sockets are counted."""
    from tests.conftest import scrape, total

    route = {"route": "/api/tts/ws", "application": "voxcpm"}
    before = total(scrape(), "ray_voxcpm_audio_seconds_total", **route)
    with open_ws(plain, key=None) as ws:
        ws.send(json.dumps({"type": "text", "text": "量一量。"}))
        ws.send(json.dumps({"type": "end"}))
        _, frames = events_until(ws, "done")
        # the replica's metrics reach the scrape every report interval; a loaded CI machine takes longer
        assert wait_until(lambda: total(scrape(), "ray_voxcpm_open_websockets", application="voxcpm") >= 1, 45)
    spoken = sum(map(len, frames)) / 2 / 44100
    # (at least: an earlier test's sentences may not have been exported yet when `before` was read)
    assert wait_until(lambda: total(scrape(), "ray_voxcpm_audio_seconds_total", **route) >= before + spoken - 1e-3, 15)
    assert wait_until(lambda: total(scrape(), "ray_voxcpm_open_websockets", application="voxcpm") == 0, 15)
