"""Pronunciation lexicons through the real service on the tiny model with a fixed seed: a PLS file or JSON
entries saved, listed, described and deleted; a request naming a lexicon speaks the alias, exactly as the text
written with it, on /api/tts and OpenAI's speech; SSML's <sub> wins; refusals name their field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests

from tests.conftest import error_of, openai_error_of
from tests.service.test_jobs import finished

DATA = Path(__file__).parents[1] / "data" / "pls"
SETTINGS = {"seed": 5, "max_len": 16, "min_len": 8, "inference_timesteps": 2, "retry_badcase": "false"}


def pcm(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    return np.frombuffer(response.content[44:], dtype="<i2")


def tts(url: str, text: str, **fields: object) -> np.ndarray:
    return pcm(requests.post(f"{url}/api/tts", data={"text": text, **SETTINGS, **fields}))


def test_a_lexicon_from_a_pls_file_says_its_alias_as_the_text_written_with_it(url: str) -> None:
    with open(DATA / "a_alias.pls", "rb") as pls:
        saved = requests.post(f"{url}/api/lexicons", data={"name": "consortia"}, files={"file": pls})
    assert saved.status_code == 201, saved.text
    lexicon = saved.json()
    assert lexicon["entries"] == 1 and lexicon["skipped"] == 0
    assert lexicon in requests.get(f"{url}/api/lexicons").json()["lexicons"]
    described = requests.get(f"{url}/api/lexicons/{lexicon['lexicon_id']}").json()
    assert described["entries_list"] == [
        {"grapheme": "W3C", "alias": "World Wide Web Consortium", "case_sensitive": True}
    ]
    written = tts(url, "The World Wide Web Consortium met.")
    assert np.array_equal(tts(url, "The W3C met.", lexicons="consortia"), written)
    assert np.array_equal(tts(url, "The W3C met.", lexicons=lexicon["lexicon_id"]), written)
    subbed = '<speak>The <sub alias="World Wide Web Consortium">W3C</sub> met.</speak>'
    assert np.array_equal(tts(url, subbed, lexicons="consortia"), written)  # <sub> wins; the same here
    body = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 5, "lexicons": ["consortia"]}
    spoken = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "The W3C met."})
    plain = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "The World Wide Web Consortium met."})
    assert spoken.status_code == plain.status_code == 200 and spoken.content == plain.content
    assert requests.delete(f"{url}/api/lexicons/{lexicon['lexicon_id']}").status_code == 204
    gone = requests.post(f"{url}/api/tts", data={"text": "The W3C met.", "lexicons": "consortia", **SETTINGS})
    assert gone.status_code == 404 and error_of(gone)["field"] == "lexicons"


def test_json_entries_pinyin_and_refusals(url: str) -> None:
    entries = [
        {"grapheme": "重庆", "pinyin": "chong2 qing4"},
        {"grapheme": "nasa", "alias": "N A S A", "case_sensitive": False},
    ]
    saved = requests.post(f"{url}/api/lexicons", data={"name": "places", "entries": json.dumps(entries)})
    assert saved.status_code == 201, saved.text
    assert np.array_equal(tts(url, "我在重庆。NASA.", lexicons="places"), tts(url, "我在{chong2}{qing4}。N A S A."))
    refusals = [
        ({"name": "bad", "entries": "[{"}, "entries"),
        ({"name": "bad", "entries": json.dumps([{"grapheme": "x", "pinyin": "x"}])}, "entries[0]"),
        ({"name": "bad"}, "file"),
        ({"name": "places", "entries": json.dumps(entries)}, "name"),  # taken
    ]
    for data, field in refusals:
        refused = requests.post(f"{url}/api/lexicons", data=data)
        assert refused.status_code in (400, 409) and error_of(refused)["field"] == field, refused.text
    too_many = requests.post(f"{url}/api/tts", data={"text": "hi", "lexicons": "places,places,places,places"})
    assert too_many.status_code == 400 and error_of(too_many)["field"] == "lexicons"
    body = {"model": "tts-1", "voice": "alloy", "input": "hi", "lexicons": ["nobody's"]}
    missing = requests.post(f"{url}/v1/audio/speech", json=body)
    assert missing.status_code == 404 and openai_error_of(missing)["param"] == "lexicons"
    hostile = b'<!DOCTYPE lexicon [<!ENTITY x SYSTEM "file:///etc/passwd">]><lexicon>&x;</lexicon>'
    refused = requests.post(f"{url}/api/lexicons", data={"name": "evil"}, files={"file": ("x.pls", hostile)})
    assert refused.status_code == 400 and error_of(refused)["field"] == "file"


def test_a_jobs_lexicons_are_applied_when_it_is_submitted(url: str) -> None:
    entries = json.dumps([{"grapheme": "W3C", "alias": "World Wide Web Consortium"}])
    assert requests.post(f"{url}/api/lexicons", data={"name": "job-brands", "entries": entries}).status_code == 201
    defaults = {"seed": 5, "max_len": 16, "min_len": 8, "inference_timesteps": 2, "retry_badcase": False}
    items = [{"text": "The W3C met.", "lexicons": ["job-brands"]}, {"text": "The World Wide Web Consortium met."}]
    job = requests.post(f"{url}/api/jobs", json={"items": items, "defaults": defaults})
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    assert finished(url, job_id)["status"] == "succeeded"
    first, second = (pcm(requests.get(f"{url}/api/jobs/{job_id}/items/{index}")) for index in (0, 1))
    # the same but for float32 rounding: the two items ran batched together (as in test_jobs.py)
    assert len(first) == len(second) and np.abs(first.astype(np.int32) - second).max() <= 2
    missing = requests.post(f"{url}/api/jobs", json={"items": [{"text": "x", "lexicons": ["nobody's"]}]})
    assert missing.status_code == 404 and error_of(missing)["field"] == "lexicons"


def test_a_saved_voice_carries_lexicons_for_requests_that_name_none(url: str, reference_wav: Path) -> None:
    """So that OpenAI's clients, which send a voice and nothing else of ours, get them."""
    entries = json.dumps([{"grapheme": "W3C", "alias": "World Wide Web Consortium"}])
    assert requests.post(f"{url}/api/lexicons", data={"name": "voice-brands", "entries": entries}).status_code == 201
    with open(reference_wav, "rb") as audio:
        data = {"name": "lexical-voice", "text": "参考音频的文本", "lexicons": "voice-brands"}
        voice = requests.post(f"{url}/api/voices", data=data, files={"audio": audio})
    assert voice.status_code == 201 and len(voice.json()["lexicon_ids"]) == 1, voice.text
    body = {"model": "tts-1", "voice": "lexical-voice", "response_format": "wav", "seed": 5}
    spoken = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "The W3C met."})
    plain = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "The World Wide Web Consortium met."})
    assert spoken.status_code == plain.status_code == 200 and spoken.content == plain.content
    with open(reference_wav, "rb") as audio:
        data = {"name": "unlexical", "text": "参考音频的文本", "lexicons": "nobody's"}
        refused = requests.post(f"{url}/api/voices", data=data, files={"audio": audio})
    assert refused.status_code == 404 and error_of(refused)["field"] == "lexicons"


def test_a_websockets_lexicons_say_its_sentences_and_its_events_name_the_written_words(url: str) -> None:
    from tests.service.test_ws import events_until, open_ws, ws_url

    entries = json.dumps([{"grapheme": "W3C", "alias": "World Wide Web Consortium"}])
    assert requests.post(f"{url}/api/lexicons", data={"name": "ws-brands", "entries": entries}).status_code == 201

    def spoken(text: str, **init: object) -> tuple[list[dict], bytes]:
        with open_ws(ws_url(url), key=None, seed=5, max_len=8, **init) as ws:
            ws.send(json.dumps({"type": "text", "text": text}))
            ws.send(json.dumps({"type": "end"}))
            events, frames = events_until(ws, "done")
        return events, b"".join(frames)

    events, audio = spoken("The W3C met.", lexicons=["ws-brands"])
    assert [e["text"] for e in events if e["type"] == "segment"] == ["The W3C met."]
    assert audio == spoken("The World Wide Web Consortium met.")[1]
