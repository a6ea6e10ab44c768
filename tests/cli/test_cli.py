"""The voxcpm-serve command against the real service: files that decode, voices, errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from serve_app.audio.codecs import AudioFormat
from serve_app.cli.main import FORMATS
from tests.conftest import TINY_V15_STEP_FRAMES, Service, decode, run


def test_say_writes_a_whole_wav(url: str, tmp_path: Path) -> None:
    result = run(url, "say", "你好，世界。", "--max-len", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data, rate = sf.read(tmp_path / "speech.wav")
    assert rate == 44100 and len(data) == 6 * TINY_V15_STEP_FRAMES
    assert "first bytes after" in result.stderr and "real-time factor" in result.stderr


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus", "ulaw"])
def test_say_in_other_formats_reading_stdin(url: str, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    result = run(url, "say", "-", "--format", fmt, "--max-len", "10", "-o", str(out), "-q", stdin="从标准输入读。")
    assert result.returncode == 0 and result.stderr == ""
    rate = {"opus": 48000, "ulaw": 8000}.get(fmt, 44100)
    assert decode(out.read_bytes(), AudioFormat(fmt), rate)[1] == pytest.approx(
        10 * TINY_V15_STEP_FRAMES / 44100, abs=0.06
    )


def test_voices_add_list_use_rm(service: Service, tmp_path: Path, reference_wav: Path) -> None:
    added = run(service.url, "voices", "add", "cli-voice", str(reference_wav), "--text", "参考音频的文本")
    assert added.returncode == 0, added.stderr
    voice_id = added.stdout.strip()
    assert voice_id in run(service.url, "voices", "list").stdout
    out = tmp_path / "cloned.wav"
    said = run(service.url, "say", "克隆", "--voice", "cli-voice", "--max-len", "4", "-o", str(out))
    assert said.returncode == 0 and sf.info(out).frames == 4 * TINY_V15_STEP_FRAMES
    assert run(service.url, "voices", "rm", voice_id).returncode == 0
    missing = run(service.url, "voices", "rm", voice_id)
    assert missing.returncode == 4 and "voice_id" in missing.stderr


def test_lexicons_add_list_use_rm_and_ssml(url: str, tmp_path: Path) -> None:
    pls = Path(__file__).parents[1] / "data" / "pls" / "a_alias.pls"
    added = run(url, "lexicons", "add", "cli-brands", str(pls))
    assert added.returncode == 0 and "1 entries" in added.stdout, added.stderr
    lexicon_id = added.stdout.split()[0]
    assert lexicon_id in run(url, "lexicons", "list").stdout
    settings = ("--max-len", "8", "--seed", "3", "-q")
    said = run(url, "say", "The W3C.", "--lexicon", "cli-brands", *settings, "-o", str(tmp_path / "a.wav"))
    written = run(url, "say", "The World Wide Web Consortium.", *settings, "-o", str(tmp_path / "b.wav"))
    assert said.returncode == written.returncode == 0, said.stderr
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    paused = run(url, "say", '<break time="1s"/>', "--ssml", "-o", str(tmp_path / "c.wav"), "-q")
    assert paused.returncode == 4 and "says nothing" in paused.stderr  # wrapped in <speak>, read as SSML
    assert run(url, "lexicons", "rm", lexicon_id).returncode == 0
    missing = run(url, "lexicons", "rm", lexicon_id)
    assert missing.returncode == 4 and "lexicon_id" in missing.stderr


def test_refusals_show_the_servers_message(url: str, tmp_path: Path) -> None:
    result = run(url, "say", "x", "--cfg-value", "9", cwd=tmp_path)
    assert result.returncode == 4
    assert "cfg_value" in result.stderr and "HTTP 422" in result.stderr
    assert not (tmp_path / "speech.wav").exists()


def test_health_and_unreachable_server(url: str) -> None:
    healthy = run(url, "health")
    assert healthy.returncode == 0 and '"status": "ok"' in healthy.stdout
    assert run("http://127.0.0.1:9", "health").returncode == 3
    assert run("http://127.0.0.1:9", "say", "x").returncode == 3


def test_play_without_an_audio_device_says_so(url: str) -> None:
    result = run(url, "say", "x", "--play", "--max-len", "2")
    assert result.returncode in (0, 6)  # 0 only where a sound device exists
    if result.returncode == 6:
        assert "sounddevice" in result.stderr or "audio output device" in result.stderr


def test_usage_errors_exit_2(url: str) -> None:
    assert run(url, "say").returncode == 2
    assert run(url, "say", "x", "--format", "ogg").returncode == 2


def test_the_commands_formats_are_the_services() -> None:
    assert set(FORMATS) == {fmt.value for fmt in AudioFormat}
