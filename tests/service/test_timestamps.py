"""Word and segment timestamps through the real stack: on the WebSocket (before each segment's last frame), in
/v1/audio/speech's SSE stream and from /api/tts/with-timestamps; estimated where no aligner is configured, aligned
by one (a small random CTC model here) where it is. Every word of the text once and in order, times monotonic and
inside the audio, segment bounds equal to the samples sent."""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile as sf

from serve_app.timing.words import words
from tests.conftest import Service, error_of, extra_app, openai_error_of
from tests.service.test_ws import events_until, open_ws, ws_url
from tests.timing.test_aligner import tiny_ctc_checkpoint

STEPS = 4  # generation steps per sentence (the tiny model always runs to max_len)
SENTENCES = ["Hello there, my friend.", "How are you today?"]
WHOLE_TEXT_STEPS = 300  # over HTTP max_len is for the whole text: room for the first sentence and the second


def check_words(timed: list[dict], text: str, start_s: float, end_s: float) -> None:
    assert [w["word"] for w in timed] == words(text)
    assert all(start_s - 1e-3 <= w["start_s"] <= w["end_s"] <= end_s + 1e-3 for w in timed)
    assert all(b["start_s"] >= a["start_s"] and b["end_s"] >= a["end_s"] for a, b in itertools.pairwise(timed))


def converse(url: str, steps: int = STEPS, **init: object) -> list[dict]:
    """Every event of one context speaking SENTENCES, binary frames as {"type": "audio", "bytes": n}."""
    with open_ws(ws_url(url), key=None, max_len=steps, **init) as ws:
        for sentence in SENTENCES:
            ws.send(json.dumps({"type": "text", "text": sentence + " "}))
        ws.send(json.dumps({"type": "end"}))
        events, _ = events_until(ws, "done")
    return events


@pytest.mark.parametrize("encoding", ["pcm_s16le", "ulaw"])
def test_websocket_word_timestamps_come_before_each_segments_last_frame(url: str, encoding: str) -> None:
    events = converse(url, timestamps="word", encoding=encoding)
    rate = 44100 if encoding == "pcm_s16le" else 8000
    width = 2 if encoding == "pcm_s16le" else 1
    position, segments = 0, {}
    for number, event in enumerate(events):
        if event["type"] == "audio":
            position += event["bytes"] // width
        elif event["type"] == "segment":
            segments[event["index"]] = {"text": event["text"], "start": event["start_sample"]}
        elif event["type"] == "timestamps":
            segment = segments[event["index"]]
            assert event["context_id"] == "0" and event["source"] == "estimated"
            later = events[number + 1 :]
            end = next(e for e in later if e["type"] == "segment_end")
            assert later[0]["type"] == "audio", "the segment's last frame comes after its timestamps"
            start_s, end_s = segment["start"] / rate, end["end_sample"] / rate
            check_words(event["words"], segment["text"], start_s, end_s)
            assert event["words"][0]["start_s"] == pytest.approx(start_s, abs=1e-3)  # estimated: the whole segment
            assert event["words"][-1]["end_s"] == pytest.approx(end_s, abs=1e-3)
            segment["timed"] = True
        elif event["type"] == "segment_end":
            assert event["end_sample"] == position
    assert [s["text"] for s in segments.values()] == SENTENCES and all(s.get("timed") for s in segments.values())


def test_websocket_segment_timestamps_are_the_segments_bounds(url: str) -> None:
    events = converse(url, timestamps="segment")
    starts = {e["index"]: e["start_sample"] for e in events if e["type"] == "segment"}
    ends = {e["index"]: e["end_sample"] for e in events if e["type"] == "segment_end"}
    stamps = [e for e in events if e["type"] == "timestamps"]
    assert [s["words"][0]["word"] for s in stamps] == SENTENCES
    for stamp in stamps:
        (only,) = stamp["words"]
        assert only["start_s"] == pytest.approx(starts[stamp["index"]] / 44100, abs=1e-3)
        assert only["end_s"] == pytest.approx(ends[stamp["index"]] / 44100, abs=1e-3)
    assert not [e for e in converse(url) if e["type"] == "timestamps"]  # none unless asked


def test_with_timestamps_answers_the_audio_and_when_each_word_is_spoken(url: str) -> None:
    text = " ".join(SENTENCES)
    form = {"text": text, "max_len": WHOLE_TEXT_STEPS, "seed": 4, "retry_badcase": "false", "format": "wav"}
    answer = requests.post(f"{url}/api/tts/with-timestamps", data=form, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    audio, rate = sf.read(io.BytesIO(base64.b64decode(body["audio_base64"])), dtype="float32")
    assert body["format"] == "wav" and body["sample_rate"] == rate == 44100 and body["source"] == "estimated"
    segments = body["segments"]
    assert [s["text"] for s in segments] == SENTENCES
    assert segments[0]["start_sample"] == 0 and segments[-1]["end_sample"] == len(audio)
    assert all(a["end_sample"] == b["start_sample"] for a, b in itertools.pairwise(segments))
    check_words(body["words"], text, 0.0, len(audio) / rate)
    # the same audio as /api/tts gives
    plain = requests.post(f"{url}/api/tts", data=form, timeout=120)
    assert sf.read(io.BytesIO(plain.content), dtype="float32")[0].tobytes() == audio.tobytes()
    slower = requests.post(f"{url}/api/tts/with-timestamps", data={**form, "speed": 0.5, "timestamps": "segment"})
    stretched = slower.json()
    assert stretched["segments"][-1]["end_s"] == pytest.approx(2 * len(audio) / rate, rel=0.02)


def test_sse_sends_timestamp_events_after_each_sentences_audio(url: str) -> None:
    payload = {
        "model": "tts-1",
        "voice": "alloy",
        "input": " ".join(SENTENCES),
        "stream_format": "sse",
        "timestamps": "word",
        "response_format": "pcm",
        "max_len": WHOLE_TEXT_STEPS,
    }
    response = requests.post(f"{url}/v1/audio/speech", json=payload, stream=True, timeout=120)
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "speech.audio.delta" and kinds[-1] == "speech.audio.done"
    stamps = [e for e in events if e["type"] == "speech.audio.timestamps"]
    assert [(s["index"], s["text"], s["source"]) for s in stamps] == [
        (0, SENTENCES[0], "estimated"),
        (1, SENTENCES[1], "estimated"),
    ]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert stamps[-1]["end_s"] == pytest.approx(len(pcm) / 2 / 24000, abs=0.01)
    for stamp in stamps:
        check_words(stamp["words"], stamp["text"], stamp["start_s"], stamp["end_s"])
    refused = requests.post(f"{url}/v1/audio/speech", json={**payload, "stream_format": "audio"})
    assert refused.status_code == 400 and openai_error_of(refused)["field"] == "timestamps"
    bad = requests.post(f"{url}/api/tts/with-timestamps", data={"text": "hi", "timestamps": "phoneme"})
    assert bad.status_code == 422 and error_of(bad)["field"] == "timestamps"


@pytest.fixture(scope="module")
def aligned_url(service: Service, checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local graph with an aligner: a small random CTC model, loaded as a configured checkpoint is."""
    checkpoint = tiny_ctc_checkpoint(tmp_path_factory.mktemp("aligner"))
    with extra_app(service, checkpoints, "aligned", {"aligner": {"source": str(checkpoint)}}) as app_url:
        yield app_url


def test_an_aligner_times_the_words_it_hears(aligned_url: str) -> None:
    events = converse(aligned_url, steps=40, timestamps="word")  # 1.3 s a sentence: more frames than letters
    stamps = [e for e in events if e["type"] == "timestamps"]
    starts = {e["index"]: e["start_sample"] / 44100 for e in events if e["type"] == "segment"}
    ends = {e["index"]: e["end_sample"] / 44100 for e in events if e["type"] == "segment_end"}
    assert [s["source"] for s in stamps] == ["aligned", "aligned"]
    for stamp, sentence in zip(stamps, SENTENCES, strict=True):
        check_words(stamp["words"], sentence, starts[stamp["index"]], ends[stamp["index"]])
    form = {"text": "你好世界。", "max_len": STEPS, "retry_badcase": "false"}
    unheard = requests.post(f"{aligned_url}/api/tts/with-timestamps", data=form, timeout=120).json()
    assert unheard["source"] == "estimated"  # a letters-only model hears nothing of Chinese: estimated, and said
