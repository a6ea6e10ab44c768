"""SSML through the real service on the tiny model with a fixed seed: an alias is the text written with it, a
break is exactly that much silence where it stands (and nowhere without it), on /api/tts and OpenAI's speech,
in saved voices by name; what is outside the subset is spoken and named; hostile XML refused at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import requests

from tests.conftest import error_of, openai_error_of, save_voice
from tests.service.test_jobs import finished

SETTINGS = {"seed": 5, "max_len": 16, "min_len": 8, "inference_timesteps": 2, "retry_badcase": "false"}
RATE = 44100


def pcm(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    return np.frombuffer(response.content[44:], dtype="<i2")


def tts(url: str, text: str, **fields: object) -> requests.Response:
    return requests.post(f"{url}/api/tts", data={"text": text, **SETTINGS, **fields})


def test_an_alias_is_the_text_written_with_it(url: str) -> None:
    plain = pcm(tts(url, "The World Wide Web Consortium met today."))
    marked = pcm(tts(url, '<speak>The <sub alias="World Wide Web Consortium">W3C</sub> met today.</speak>'))
    assert np.array_equal(plain, marked)


def test_a_break_is_exactly_that_much_silence_where_it_stands(url: str) -> None:
    without = pcm(tts(url, "<speak>First one. Second one.</speak>"))
    paused = pcm(tts(url, '<speak>First one. <break time="800ms"/> Second one.</speak>'))
    pause = round(0.8 * RATE)
    assert len(paused) == len(without) + pause

    def longest_silence(audio: np.ndarray) -> int:
        silent = np.concatenate([[0], (audio == 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(silent))
        return int((edges[1::2] - edges[::2]).max(initial=0))

    assert longest_silence(paused) >= pause - 441  # the first sentence fades out over the 10 ms crossfade
    assert longest_silence(without) < 441


def test_ssml_on_openais_route_and_in_saved_voices_by_name(url: str, reference_wav: Path) -> None:
    voice = save_voice(url, reference_wav, name="ssml-narrator", text="参考音频的文本")
    body = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "wav", "seed": 5}
    plain = requests.post(f"{url}/v1/audio/speech", json=body)
    marked = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "<speak><s>Hello there.</s></speak>"})
    assert plain.status_code == marked.status_code == 200 and plain.content == marked.content
    by_id = pcm(tts(url, "Hello there.", voice_id=voice["voice_id"]))
    by_name = pcm(tts(url, '<speak><voice name="ssml-narrator">Hello there.</voice></speak>'))
    assert np.array_equal(by_id, by_name)
    missing = tts(url, '<speak><voice name="nobody">Hi.</voice></speak>')
    assert missing.status_code == 404 and error_of(missing)["field"] == "text"
    refused = requests.post(f"{url}/v1/audio/speech", json={**body, "input": "<speak>Hi<break time='1y'/></speak>"})
    assert refused.status_code == 400 and openai_error_of(refused)["param"] == "input"


def test_elements_outside_the_subset_are_spoken_and_named(url: str) -> None:
    response = tts(url, '<speak><emphasis level="strong">Loud</emphasis> words.</speak>')
    assert np.array_equal(pcm(response), pcm(tts(url, "Loud words.")))
    assert response.headers["x-ignored-fields"] == "emphasis"


def test_malformed_and_hostile_xml_is_a_400_naming_text_at_once(url: str) -> None:
    cases = {
        "<speak>\n<p>Hi</speak>": "line 2",
        '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>': "DTD",
        "<speak>" + "<s>" * 50_000 + "x" + "</s>" * 50_000 + "</speak>": "deeper than",
    }
    for text, words in cases.items():
        started = time.monotonic()
        response = requests.post(f"{url}/api/tts", data={"text": text}, timeout=10)
        assert response.status_code in (400, 413), response.text[:200]
        error = error_of(response)
        assert error["field"] == "text" and (words in error["message"] or response.status_code == 413)
        assert time.monotonic() - started < 2


def test_a_job_item_may_be_ssml(url: str) -> None:
    """Read when the job is submitted (a malformed item is refused then, naming it), rendered as a request is."""
    plain, marked = "<speak>First one. Second one.</speak>", '<speak>First one.<break time="500ms"/>Second one.</speak>'
    defaults = {key: value for key, value in SETTINGS.items() if key != "retry_badcase"}
    bad = requests.post(f"{url}/api/jobs", json={"items": [{"text": plain}, {"text": "<speak>oops"}]})
    assert bad.status_code == 400 and error_of(bad)["field"] == "items[1].text"
    job = requests.post(f"{url}/api/jobs", json={"items": [{"text": plain}, {"text": marked}], "defaults": defaults})
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    assert finished(url, job_id)["status"] == "succeeded"
    first, second = (pcm(requests.get(f"{url}/api/jobs/{job_id}/items/{index}")) for index in (0, 1))
    assert len(second) == len(first) + round(0.5 * RATE)


def test_a_dialogue_as_turns_is_its_ssml(url: str, reference_wav: Path) -> None:
    """``turns`` instead of ``text``: each turn in its saved voice, 0.3 s after each but the last, as the same
    dialogue written in SSML; each turn's field named where it is wrong."""
    host, guest = (save_voice(url, reference_wav, text=text)["name"] for text in ("参考音频的文本", "另一段参考文本"))
    turns = [{"voice_id": host, "text": "Welcome back."}, {"voice_id": guest, "text": "Thanks for having me."}]
    said = pcm(requests.post(f"{url}/api/tts", data={"turns": json.dumps(turns), **SETTINGS}))
    ssml = (
        f'<speak><voice name="{host}">Welcome back.</voice><break time="300ms"/>'
        f'<voice name="{guest}">Thanks for having me.</voice></speak>'
    )
    assert np.array_equal(said, pcm(tts(url, ssml)))
    refusals = [
        ({"turns": "[{"}, 400, "turns"),
        ({"turns": json.dumps([{"voice_id": host}])}, 400, "turns[0].text"),
        ({"turns": json.dumps([turns[0], {"voice_id": "nobody", "text": "x"}])}, 404, "turns[1].voice_id"),
        ({"turns": json.dumps(turns), "text": "both"}, 422, "turns"),
        ({}, 422, "text"),
    ]
    for data, status, field in refusals:
        refused = requests.post(f"{url}/api/tts", data={**data, "max_len": 2})
        assert refused.status_code == status and error_of(refused)["field"] == field, refused.text
