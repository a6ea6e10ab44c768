"""The playground page in headless Chromium against the real service: it speaks while it streams."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import safetensors.torch
import soundfile as sf

from tests.conftest import REPO, TINY_V15_STEP_FRAMES, Service, extra_app
from tests.model.test_adapters import random_adapter

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",  # nothing outside loopback is reachable here
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (Debian package: chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, url: str) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{url}/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    context.close()


def test_speaks_while_streaming_and_downloads_a_wav(page: Page, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.fill("#text", "你好，这是浏览器里的流式语音合成。")
    page.fill("#max_len", "40")
    page.click("#speak")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
    run = page.evaluate("({first: lastRun.firstAudioMs, total: lastRun.totalMs, audio: lastRun.audioSeconds})")
    print(f"\nplayground: first audio after {run['first']:.0f} ms of {run['total']:.0f} ms")
    assert 0 < run["first"] < run["total"]  # audio started before the stream ended
    assert run["audio"] == pytest.approx(40 * TINY_V15_STEP_FRAMES / 44100, abs=1e-3)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "speech.wav"
    download.value.save_as(saved)
    data, rate = sf.read(saved)
    assert rate == 44100 and len(data) == 40 * TINY_V15_STEP_FRAMES


def test_says_when_the_model_speaks_noise(page: Page) -> None:
    """The session's model runs on synthetic weights: the page says so above the form."""
    notice = page.locator("#synthetic-notice")
    assert notice.is_visible() and "voxcpm runs on synthetic (random) weights and speaks noise" in notice.text_content()
    assert "synthetic weights: noise" in page.locator("#model option").first.text_content()


def test_out_of_range_knobs_are_stopped_in_the_browser(page: Page) -> None:
    page.fill("#cfg_value", "9")
    page.click("#speak")
    assert page.evaluate("document.querySelector('#cfg_value').validity.rangeOverflow")
    assert page.text_content("#status") == "idle"


def test_shows_the_apis_errors(page: Page) -> None:
    page.fill("#text", "字" * 5001)  # over the server's configured limit: only the API can refuse it
    page.click("#speak")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "limit is 5000" in error.text_content() and "(field: text)" in error.text_content()
    page.screenshot(path=str(ARTIFACTS / "playground-error.png"))


def test_knob_ranges_come_from_the_api(page: Page) -> None:
    assert page.get_attribute("#cfg_value", "max") == "5"
    assert page.get_attribute("#inference_timesteps", "min") == "1"
    assert page.input_value("#inference_timesteps") == "5"


def test_saves_uses_and_deletes_a_voice(page: Page, reference_wav: Path) -> None:
    page.fill("#voice-name", "browser-voice")
    page.fill("#voice-text", "参考音频的文本")
    page.set_input_files("#voice-audio", str(reference_wav))
    page.click("#voice-form button[type=submit]")
    page.wait_for_function("document.querySelector('#voice').selectedOptions[0].text === 'browser-voice'")
    page.fill("#max_len", "10")
    page.click("#speak")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
    page.click("button[aria-label='Delete voice browser-voice']")
    page.wait_for_function("!document.querySelector('#voice-list').textContent.includes('browser-voice')")


def test_uploads_uses_and_deletes_an_adapter(page: Page, synthetic_engine: Callable[..., Any], tmp_path: Path) -> None:
    expected = synthetic_engine("tiny-voxcpm1.5").runtime.adapters.expected
    weights = tmp_path / "lora_weights.safetensors"
    safetensors.torch.save_file(random_adapter(expected, 21), str(weights))
    page.fill("#adapter-name", "browser-adapter")
    page.set_input_files("#adapter-weights", str(weights))
    page.click("#adapter-form button[type=submit]")
    page.wait_for_function("document.querySelector('#adapter').selectedOptions[0].text === 'browser-adapter'")
    page.fill("#max_len", "10")
    with page.expect_request(lambda request: request.url.endswith("/api/tts/stream")) as sent:
        page.click("#speak")
    assert b'name="adapter"' in (sent.value.post_data_buffer or b"")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
    page.click("button[aria-label='Delete adapter browser-adapter']")
    page.wait_for_function("!document.querySelector('#adapter-list').textContent.includes('browser-adapter')")


def test_ssml_examples_and_a_lexicon_uploaded_chosen_and_deleted(page: Page) -> None:
    page.select_option("#ssml-example", "pause")
    assert page.input_value("#text").startswith("<speak>") and page.input_value("#ssml-example") == ""
    page.fill("#lexicon-name", "browser-lexicon")
    page.set_input_files("#lexicon-file", str(REPO / "tests" / "data" / "pls" / "a_alias.pls"))
    page.click("#lexicon-form button[type=submit]")
    page.wait_for_function("document.querySelector('#lexicon-list').textContent.includes('browser-lexicon')")
    page.select_option("#lexicons", label="browser-lexicon")
    page.fill("#max_len", "10")
    with page.expect_request(lambda request: request.url.endswith("/api/tts/stream")) as sent:
        page.click("#speak")
    assert b'name="lexicons"' in (sent.value.post_data_buffer or b"")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=60_000)
    page.click("button[aria-label='Delete lexicon browser-lexicon']")
    page.wait_for_function("!document.querySelector('#lexicon-list').textContent.includes('browser-lexicon')")


def test_sends_the_api_key_the_user_typed(page: Page) -> None:
    """A service with API keys: the key typed on the page goes with every API call of the page."""
    with page.expect_request(lambda request: request.url.endswith("/v1/models")) as models:
        page.fill("#api-key", "typed-key")
        page.dispatch_event("#api-key", "change")
    assert models.value.headers["authorization"] == "Bearer typed-key"
    with page.expect_request(lambda request: request.url.endswith("/api/tts/stream")) as speak:
        page.click("#speak")
    assert speak.value.headers["authorization"] == "Bearer typed-key"


# Live mode: typed text is spoken as it is typed, over WebSocket /api/tts/ws.


def go_live(page: Page, max_len: int) -> None:
    page.fill("#text", "")
    page.fill("#max_len", str(max_len))
    page.click("#live")
    page.wait_for_function("window.liveRun && window.liveRun.ready", timeout=30_000)


def test_typed_sentences_are_spoken_as_they_are_typed(page: Page) -> None:
    go_live(page, max_len=3)
    page.type("#text", "你好。", delay=30)
    # The first sentence is spoken while the second is still being typed.
    page.wait_for_function("window.liveRun.segments.length === 1 && window.liveRun.samples > 0", timeout=30_000)
    page.type("#text", "世界", delay=30)
    page.click("#live")  # end: the rest is spoken, then the socket closes
    page.wait_for_function("window.liveRun.done", timeout=30_000)
    run = page.evaluate("({segments: liveRun.segments, samples: liveRun.samples})")
    assert run["segments"] == ["你好。", "世界"]
    assert run["samples"] == 2 * 3 * TINY_V15_STEP_FRAMES
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-live.png"), full_page=True)


def test_interrupt_silences_the_sentence(page: Page) -> None:
    go_live(page, max_len=400)
    page.type("#text", "这是一段很长的话。", delay=10)
    page.wait_for_function("window.liveRun.samples > 0", timeout=30_000)
    page.click("#interrupt")
    page.wait_for_function("window.liveRun.cancelled === 1", timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.evaluate("window.liveRun.afterCancel") == 0
    assert page.evaluate("window.liveRun.samples") < 400 * TINY_V15_STEP_FRAMES


def test_live_mode_offers_the_key_beside_voxcpm_and_the_server_answers_voxcpm(page: Page) -> None:
    """Browsers cannot set headers on a WebSocket, so the page offers the key as the subprotocol bearer.KEY,
    beside `voxcpm`: the server answers with `voxcpm`, so the key never comes back in the response's
    Sec-WebSocket-Protocol (where proxies log it). The handshake as Chromium sent and received it (CDP)."""
    handshakes: dict[str, dict] = {}
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.on("Network.webSocketWillSendHandshakeRequest", lambda e: handshakes.update(request=e["request"]["headers"]))
    cdp.on("Network.webSocketHandshakeResponseReceived", lambda e: handshakes.update(response=e["response"]))
    page.fill("#api-key", "typed-key")
    page.dispatch_event("#api-key", "change")
    go_live(page, max_len=3)
    assert page.evaluate("live.socket.protocol") == "voxcpm"
    page.wait_for_timeout(200)  # CDP events arrive asynchronously
    request = {name.lower(): value for name, value in handshakes["request"].items()}
    assert [p.strip() for p in request["sec-websocket-protocol"].split(",")] == ["voxcpm", "bearer.typed-key"]
    response = handshakes["response"]
    assert response["status"] == 101
    headers = {name.lower(): value for name, value in response["headers"].items()}
    assert headers["sec-websocket-protocol"] == "voxcpm"
    assert "typed-key" not in str(response["headers"])
    page.click("#live")


# The same with a real WebSocket client, against an app that requires the key.

KEY = "playground-ws-key"


@pytest.fixture(scope="module")
def keyed(service: Service, checkpoints: Path) -> Iterator[str]:
    with extra_app(service, checkpoints, "pgkeyed", args_overrides={"access": {"api_keys": [KEY]}}) as url:
        yield url.replace("http://", "ws://") + "/api/tts/ws"


def test_the_two_protocol_form_is_answered_voxcpm_and_the_single_form_still_works(keyed: str) -> None:
    """["voxcpm", "bearer.KEY"]: the key authenticates and the answer is `voxcpm`, no key in any response
    header. ["bearer.KEY"] alone (existing clients): still accepted, answered with the key itself, the only
    protocol offered (a browser fails a socket answered with a protocol it did not offer)."""
    import json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with connect(keyed, subprotocols=["voxcpm", f"bearer.{KEY}"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "voxcpm"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "voxcpm"
        assert KEY not in str(ws.response.headers)
        ws.send(json.dumps({"type": "init", "max_len": 3}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
    with connect(keyed, subprotocols=[f"bearer.{KEY}"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == f"bearer.{KEY}"
        ws.send(json.dumps({"type": "init", "max_len": 3}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
    with pytest.raises(InvalidStatus) as refused:
        connect(keyed, subprotocols=["voxcpm", "bearer.wrong"], open_timeout=30)  # type: ignore[list-item]
    assert refused.value.response.status_code == 401
    assert "wrong" not in str(refused.value.response.headers)


def test_renders_a_document_in_the_background_and_downloads_it(page: Page) -> None:
    page.fill("#max_len", "6")
    page.fill("#seed", "5")
    page.fill("#job-document", "# 第一章\n\n浏览器里提交的后台任务。")
    page.locator("#job-list[data-loaded]").wait_for(state="attached")  # the jobs there before this one
    before = page.locator("#job-list li").count()
    page.click("#job-submit")
    page.wait_for_function(f"document.querySelectorAll('#job-list li').length > {before}")
    newest = page.locator("#job-list li").first  # the list is newest first: this one
    download_button = newest.get_by_role("button", name="Download")
    download_button.wait_for(timeout=60_000)
    assert "document" in newest.inner_text() and "succeeded — 1/1 chunks" in newest.inner_text()
    with page.expect_download() as download:
        download_button.click()
    audio = Path(download.value.path()).read_bytes()  # the document's WAV, streamed (a header of unknown length)
    assert audio[:4] == b"RIFF" and len(audio) > 44 + 6 * TINY_V15_STEP_FRAMES * 2  # its 6 steps, and a pause
    job = newest.get_by_role("button", name="Delete").get_attribute("aria-label").removeprefix("Delete job ")
    newest.get_by_role("button", name="Delete").click()
    page.locator(f"button[aria-label='Delete job {job}']").wait_for(state="detached")
