"""The HTTP contract through the real stack: endpoints, errors, disconnects, both architectures."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from serve_app.audio.codecs import AudioFormat
from tests.conftest import (
    TINY_V2_STEP_FRAMES,
    TINY_V15_STEP_FRAMES,
    V2_MODEL,
    Service,
    decode,
    error_of,
    extra_app,
    in_flight,
    replica_status,
    wait_until,
)

LONG_TEXT = "这是一个很长的句子，用来测试流式合成。" * 40  # thousands of steps: tens of seconds on CPU


def stream_frames(response: requests.Response) -> tuple[np.ndarray, int]:
    assert response.status_code == 200, response.text[:300]
    data, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    return data, rate


class TestStream:
    def test_max_len_bounds_the_stream_to_exact_frames(self, url: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data={"text": LONG_TEXT, "max_len": 12})
        data, rate = stream_frames(response)
        assert rate == 44100
        assert len(data) == 12 * TINY_V15_STEP_FRAMES

    def test_long_text_streams_as_one_continuous_wav(self, url: str) -> None:
        """Two sentences, spoken in turn: 58 steps each, one 10 ms crossfade, one header."""
        response = requests.post(f"{url}/api/tts/stream", data={"text": "这是第一个句子。这是第二个句子。"})
        data, _ = stream_frames(response)
        assert len(data) == 2 * 58 * TINY_V15_STEP_FRAMES - 441

    def test_normalize(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts/stream", data={"text": "2025年1月3日，气温25度。", "normalize": "true", "max_len": 4}
        )
        assert stream_frames(response)[0].size == 4 * TINY_V15_STEP_FRAMES

    def test_a_text_the_normalizer_cannot_read_is_read_as_written(self, url: str) -> None:
        """wetext's English normalizer asserts on "0¢" (found by the fuzzer): spoken as written, not a 500."""
        response = requests.post(f"{url}/api/tts/stream", data={"text": "0¢", "normalize": "true", "max_len": 4})
        assert response.status_code == 200 and stream_frames(response)[0].size == 4 * TINY_V15_STEP_FRAMES

    def test_streamed_header_announces_unknown_length(self, url: str) -> None:
        body = requests.post(f"{url}/api/tts/stream", data={"text": "你好", "max_len": 3}).content
        assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
        assert body[4:8] == b"\xff\xff\xff\xff" and body[40:44] == b"\xff\xff\xff\xff"
        assert len(body) == 44 + 3 * TINY_V15_STEP_FRAMES * 2

    def test_urlencoded_form_is_accepted(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts/stream",
            data="text=hello&inference_timesteps=3&max_len=4",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        data, _ = stream_frames(response)
        assert len(data) == 4 * TINY_V15_STEP_FRAMES

    def test_every_seed_field_is_accepted(self, url: str, reference_wav: Path) -> None:
        fields = {
            "text": "全部参数。",
            "prompt_text": "参考文本",
            "cfg_value": "1.5",
            "inference_timesteps": "2",
            "min_len": "2",
            "max_len": "6",
            "normalize": "false",
            "denoise": "false",
        }
        with open(reference_wav, "rb") as audio:
            response = requests.post(f"{url}/api/tts/stream", data=fields, files={"prompt_audio": audio})
        data, _ = stream_frames(response)
        assert len(data) == 6 * TINY_V15_STEP_FRAMES

    @pytest.mark.parametrize("subtype,channels,rate", [("PCM_U8", 1, 8000), ("FLOAT", 2, 48000), ("PCM_24", 1, 22050)])
    def test_reference_audio_of_any_layout_is_converted(
        self, url: str, tmp_path: Path, subtype: str, channels: int, rate: int
    ) -> None:
        path = tmp_path / "ref.wav"
        samples = 0.2 * np.sin(np.linspace(0, 300, rate)).repeat(channels).reshape(-1, channels)
        sf.write(path, samples, rate, subtype=subtype)
        with open(path, "rb") as audio:
            response = requests.post(
                f"{url}/api/tts/stream",
                data={"text": "你好", "prompt_text": "参考", "max_len": 3},
                files={"prompt_audio": ("../../etc/passwd", audio, "audio/wav")},
            )
        assert stream_frames(response)[0].size == 3 * TINY_V15_STEP_FRAMES

    def test_flac_reference(self, url: str, tmp_path: Path) -> None:
        path = tmp_path / "ref.flac"
        sf.write(path, 0.2 * np.sin(np.linspace(0, 300, 16000)), 16000, format="FLAC")
        with open(path, "rb") as audio:
            response = requests.post(
                f"{url}/api/tts/stream",
                data={"text": "你好", "prompt_text": "参考", "max_len": 3},
                files={"prompt_audio": audio},
            )
        assert response.status_code == 200


class TestWholeFile:
    def test_api_tts_returns_a_wav_with_exact_sizes(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts", data={"text": "你好，世界。", "max_len": 8, "retry_badcase": "false"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert int(response.headers["content-length"]) == len(response.content)
        body = response.content
        assert int.from_bytes(body[4:8], "little") == len(body) - 8
        info = sf.info(io.BytesIO(body))
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
        assert info.frames > 0

    def test_retry_badcase_fields(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts",
            data={
                "text": "你好",
                "max_len": 4,
                "retry_badcase": "true",
                "retry_badcase_max_times": 2,
                "retry_badcase_ratio_threshold": 3.0,
            },
        )
        assert response.status_code == 200


class TestErrors:
    @pytest.mark.parametrize(
        "fields,field",
        [
            ({}, "text"),
            ({"text": "   "}, "text"),
            ({"text": "x", "cfg_value": "0.5"}, "cfg_value"),
            ({"text": "x", "cfg_value": "5.5"}, "cfg_value"),
            ({"text": "x", "cfg_value": "nan"}, "cfg_value"),
            ({"text": "x", "inference_timesteps": "0"}, "inference_timesteps"),
            ({"text": "x", "inference_timesteps": "101"}, "inference_timesteps"),
            ({"text": "x", "inference_timesteps": "five"}, "inference_timesteps"),
            ({"text": "x", "min_len": "0"}, "min_len"),
            ({"text": "x", "max_len": "4097"}, "max_len"),
            ({"text": "x", "min_len": "10", "max_len": "5"}, "max_len"),
            ({"text": "x", "normalize": "maybe"}, "normalize"),
            ({"text": "x", "denoise": "2"}, "denoise"),
            ({"text": "x", "prompt_text": "transcript without audio"}, "prompt_audio"),
            ({"text": "x", "denoise": "true"}, "denoise"),
            ({"text": "x", "retry_badcase": "true"}, "retry_badcase"),  # not a streaming field
            ({"text": "x", "no_such_field": "1"}, "no_such_field"),
        ],
    )
    def test_out_of_range_fields_are_422_naming_the_field(self, url: str, fields: dict, field: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data=fields)
        assert response.status_code == 422, response.text
        assert error_of(response)["field"] == field

    def test_api_tts_validates_its_extra_fields(self, url: str) -> None:
        response = requests.post(f"{url}/api/tts", data={"text": "x", "retry_badcase_max_times": "0"})
        assert response.status_code == 422
        assert error_of(response)["field"] == "retry_badcase_max_times"

    def test_text_over_the_configured_limit_is_413(self, url: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data={"text": "字" * 5001})
        assert response.status_code == 413
        assert error_of(response)["field"] == "text"

    @pytest.mark.parametrize("payload", [b"this is not audio at all", b"RIFF\x00\x00\x00\x00WAVEfmt ", bytes(4096)])
    def test_non_audio_upload_is_415(self, url: str, payload: bytes) -> None:
        response = requests.post(
            f"{url}/api/tts/stream",
            data={"text": "x", "prompt_text": "y"},
            files={"prompt_audio": ("voice.wav", payload, "audio/wav")},
        )
        assert response.status_code == 415
        error = error_of(response)
        assert error["field"] == "prompt_audio"
        assert "0x" not in error["message"]  # no object reprs or addresses leak

    def test_empty_upload_is_422(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts/stream",
            data={"text": "x", "prompt_text": "y"},
            files={"prompt_audio": ("voice.wav", b"", "audio/wav")},
        )
        assert response.status_code == 422
        assert error_of(response)["field"] == "prompt_audio"

    def test_v1_model_needs_the_transcript(self, url: str, reference_wav: Path) -> None:
        with open(reference_wav, "rb") as audio:
            response = requests.post(f"{url}/api/tts/stream", data={"text": "x"}, files={"prompt_audio": audio})
        assert response.status_code == 422
        assert error_of(response)["field"] == "prompt_text"

    def test_malformed_multipart_is_400(self, url: str) -> None:
        response = requests.post(
            f"{url}/api/tts/stream",
            data=b'--zzz\r\nContent-Disposition: form-data; name="text"\r\n\r\nunterminated',
            headers={"Content-Type": "multipart/form-data; boundary=zzz"},
        )
        assert response.status_code in (400, 422)
        error_of(response)

    def test_unknown_route_is_json_404(self, url: str) -> None:
        response = requests.get(f"{url}/no/such/route")
        assert response.status_code == 404


class TestStatus:
    def test_health_reports_the_model_and_its_replicas(self, url: str) -> None:
        response = requests.get(f"{url}/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        (model,) = body["models"]
        assert model["sample_rate"] == 44100
        assert model["architecture"] == "voxcpm"
        assert model["replicas_running"] == 1

    def test_ready_once_every_model_has_a_warmed_replica(self, url: str, service: Service) -> None:
        response = requests.get(f"{url}/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "models": ["voxcpm"]}
        both = requests.get(f"{service.multi_url}/ready")
        assert both.status_code == 200 and len(both.json()["models"]) == 2

    def test_not_ready_names_the_models_without_a_replica(self, service: Service, checkpoints: Path) -> None:
        """A model with no replica (here: scaled to zero) keeps /ready at 503 while /health says why."""
        to_zero = {"num_replicas": None, "autoscaling_config": {"min_replicas": 0, "initial_replicas": 0}}
        with extra_app(service, checkpoints, "unready", deployments={"VoxCPMModel": to_zero}) as app_url:
            response = requests.get(f"{app_url}/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "not_ready"
            assert body["models_not_ready"] == ["voxcpm"]
            assert "warmed up" in body["detail"]
            health = requests.get(f"{app_url}/health")
            assert health.status_code == 503 and health.json()["models"][0]["replicas_running"] == 0

    def test_gpu_status_on_cpu_is_an_empty_list(self, url: str) -> None:
        response = requests.get(f"{url}/api/gpu/status")
        assert response.status_code == 200
        body = response.json()
        assert body["gpus"] == []
        assert body["cuda_available"] is False
        assert body["message"]
        assert body["replicas"][0]["device"] == "cpu"

    def test_docs_and_openapi_show_the_ranges(self, url: str) -> None:
        assert requests.get(f"{url}/docs").status_code == 200
        schemas = requests.get(f"{url}/openapi.json").json()["components"]["schemas"]
        stream_form = schemas["TTSStreamForm"]["properties"]
        assert stream_form["cfg_value"]["minimum"] == 1.0 and stream_form["cfg_value"]["maximum"] == 5.0
        assert stream_form["inference_timesteps"]["default"] == 5
        assert stream_form["max_len"]["maximum"] == 4096
        assert "retry_badcase" in schemas["TTSForm"]["properties"]

    def test_status_calls_do_not_wait_behind_a_generation(self, url: str) -> None:
        """While a long stream generates, /health and /api/gpu/status answer (and see it in flight)."""
        with requests.post(f"{url}/api/tts/stream", data={"text": LONG_TEXT}, stream=True) as stream:
            chunks = stream.iter_content(chunk_size=None)
            next(chunks)
            assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
            assert in_flight(url) == 1
            next(chunks)  # the stream is still going: status did not wait for its end
        assert wait_until(lambda: in_flight(url) == 0, 15)


class TestCancellation:
    def test_disconnect_mid_stream_frees_the_replica(self, url: str) -> None:
        stream = requests.post(f"{url}/api/tts/stream", data={"text": LONG_TEXT}, stream=True)
        received = 0
        for chunk in stream.iter_content(chunk_size=8192):
            received += len(chunk)
            if received > 20000:
                break
        stream.close()
        assert wait_until(lambda: in_flight(url) == 0, 15), "the generation went on after the client left"
        response = requests.post(f"{url}/api/tts/stream", data={"text": "下一个请求", "max_len": 4})
        assert stream_frames(response)[0].size == 4 * TINY_V15_STEP_FRAMES

    def test_queued_requests_are_served_in_turn(self, url: str) -> None:
        """Concurrent requests on one replica (batched together, or one at a time by the reference engine)
        all complete whole."""
        results: list[int] = []

        def one(i: int) -> None:
            response = requests.post(f"{url}/api/tts/stream", data={"text": f"并发请求{i}", "max_len": 5 + i})
            results.append(stream_frames(response)[0].size // TINY_V15_STEP_FRAMES)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(results) == [5, 6, 7, 8]


class TestBatching:
    """configs/local.yaml runs the batched engine: one replica generates concurrent streams together."""

    def test_concurrent_streams_start_before_any_ends(self, url: str) -> None:
        """Under the reference engine the second stream's first chunk would wait for the first stream's end."""
        first_chunk_at: list[float] = []
        ended_at: list[float] = []
        started = time.monotonic()

        def one(i: int) -> None:
            response = requests.post(
                f"{url}/api/tts/stream", data={"text": f"批处理请求{i}", "max_len": 40}, stream=True, timeout=60
            )
            pieces = response.iter_content(chunk_size=None)
            next(pieces)
            first_chunk_at.append(time.monotonic() - started)
            frames = sum(len(piece) for piece in pieces)
            ended_at.append(time.monotonic() - started)
            assert frames > 0

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(ended_at) == 4
        assert max(first_chunk_at) < min(ended_at)

    def test_the_served_engine_is_reported(self, service: Service) -> None:
        models = {m["name"]: m for m in requests.get(f"{service.multi_url}/health", timeout=10).json()["models"]}
        assert models["voxcpm1.5-tiny-synthetic"]["engine"] == "batched"
        assert models[V2_MODEL]["engine"] == "voxcpm"


class TestSeveralModels:
    """configs/multi-model.yaml: a VoxCPM1.5- and a VoxCPM2-shaped model, routed by `model`."""

    def test_the_model_field_routes(self, service: Service) -> None:
        default = requests.post(f"{service.multi_url}/api/tts/stream", data={"text": "你好", "max_len": 5})
        assert stream_frames(default)[0].size == 5 * TINY_V15_STEP_FRAMES
        assert default.headers["x-model"] == "voxcpm1.5-tiny-synthetic"
        v2 = requests.post(
            f"{service.multi_url}/api/tts/stream", data={"text": "你好", "max_len": 5, "model": V2_MODEL}
        )
        data, rate = stream_frames(v2)
        assert (rate, v2.headers["x-sample-rate"], v2.headers["x-model"]) == (48000, "48000", V2_MODEL)
        assert len(data) == 5 * TINY_V2_STEP_FRAMES
        openai = requests.post(
            f"{service.multi_url}/v1/audio/speech",
            json={"model": V2_MODEL, "voice": "alloy", "input": "你好", "response_format": "wav", "max_len": 3},
        )
        assert openai.headers["x-model"] == V2_MODEL and stream_frames(openai)[1] == 48000

    def test_unknown_model_is_404_naming_the_field(self, service: Service) -> None:
        response = requests.post(f"{service.multi_url}/api/tts/stream", data={"text": "x", "model": "voxcpm9"})
        assert response.status_code == 404 and error_of(response)["field"] == "model"

    def test_models_are_listed_with_their_state(self, service: Service) -> None:
        health = requests.get(f"{service.multi_url}/health").json()
        assert health["status"] == "ok" and health["default_model"] == "voxcpm1.5-tiny-synthetic"
        architectures = {
            m["name"]: (m["architecture"], m["prompt_sample_rate"], m["replicas_running"]) for m in health["models"]
        }
        assert architectures == {"voxcpm1.5-tiny-synthetic": ("voxcpm", 44100, 1), V2_MODEL: ("voxcpm2", 16000, 1)}
        listed = requests.get(f"{service.multi_url}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["voxcpm1.5-tiny-synthetic", V2_MODEL]
        status = requests.get(f"{service.multi_url}/api/gpu/status").json()
        assert sorted(r["model"] for r in status["replicas"]) == sorted(architectures)

    def test_voxcpm2_clones_from_audio_alone_and_with_transcript(self, service: Service, reference_wav: Path) -> None:
        for extra in ({}, {"prompt_text": "参考文本"}):
            with open(reference_wav, "rb") as audio:
                response = requests.post(
                    f"{service.multi_url}/api/tts/stream",
                    data={"text": "克隆", "max_len": 4, "model": V2_MODEL, **extra},
                    files={"prompt_audio": audio},
                )
            assert stream_frames(response)[1] == 48000


class TestPromptCache:
    def test_the_same_reference_is_encoded_once_per_replica(self, url: str, tmp_path: Path) -> None:
        path = tmp_path / "unique.wav"
        sf.write(path, 0.1 * np.sin(np.linspace(0, 1234, 22050)), 22050)

        def clone(transcript: str) -> None:
            with open(path, "rb") as audio:
                response = requests.post(
                    f"{url}/api/tts/stream",
                    data={"text": "缓存", "prompt_text": transcript, "max_len": 3},
                    files={"prompt_audio": audio},
                )
            assert stream_frames(response)[0].size == 3 * TINY_V15_STEP_FRAMES

        def counters() -> tuple[int, int]:
            replica = replica_status(url)
            return replica["prompt_cache_hits"], replica["prompt_cache_misses"]

        hits, misses = counters()
        clone("第一次")
        clone("第一次")
        assert counters() == (hits + 1, misses + 1)
        clone("另一段文本")  # same audio, other transcript: another prompt
        assert counters() == (hits + 1, misses + 2)


class TestFormats:
    @pytest.mark.parametrize(
        "fmt,media_type,rate",
        [
            ("wav", "audio/wav", 44100),
            ("pcm", "audio/pcm", 44100),
            ("flac", "audio/flac", 44100),
            ("mp3", "audio/mpeg", 44100),
            ("opus", "audio/ogg", 48000),
            ("aac", "audio/aac", 44100),
            ("ulaw", "audio/PCMU", 8000),  # telephony's G.711, raw, 8 kHz unless asked otherwise
            ("alaw", "audio/PCMA", 8000),
        ],
    )
    @pytest.mark.parametrize("path", ["/api/tts/stream", "/api/tts"])
    def test_every_format_decodes_to_the_generated_audio(
        self, url: str, path: str, fmt: str, media_type: str, rate: int
    ) -> None:
        data = {"text": LONG_TEXT, "max_len": 20, "format": fmt}
        response = requests.post(
            f"{url}{path}", data={**data, "retry_badcase": "false"} if path == "/api/tts" else data
        )
        assert response.status_code == 200, response.text[:200]
        assert response.headers["content-type"] == media_type
        assert int(response.headers["x-sample-rate"]) == rate
        decoded_rate, seconds = decode(response.content, AudioFormat(fmt), rate)
        assert decoded_rate == rate
        assert seconds == pytest.approx(20 * TINY_V15_STEP_FRAMES / 44100, abs=0.06)

    def test_sample_rate_resamples_the_stream(self, url: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data={"text": LONG_TEXT, "max_len": 10, "sample_rate": 16000})
        data, rate = stream_frames(response)
        assert rate == 16000 and response.headers["x-sample-rate"] == "16000"
        assert len(data) == pytest.approx(10 * TINY_V15_STEP_FRAMES * 16000 / 44100, abs=2)

    @pytest.mark.parametrize(
        "fields,field",
        [
            ({"format": "ogg-vorbis"}, "format"),
            ({"sample_rate": "1000"}, "sample_rate"),
            ({"format": "opus", "sample_rate": "44100"}, "sample_rate"),
        ],
    )
    def test_impossible_outputs_are_422(self, url: str, fields: dict, field: str) -> None:
        response = requests.post(f"{url}/api/tts/stream", data={"text": "x", **fields})
        assert response.status_code == 422
        assert error_of(response)["field"] == field
