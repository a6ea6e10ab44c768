"""Voice-agent latency on ``/api/tts/ws``: text arriving as a language model writes it.

A language model's answer is replayed token by token (``--tokens-per-s``, 20 by default) in
Chinese and English. Measured:

- **first audio**: from the token that ends the first sentence to its first audio frame (the
  latency a listener feels once the model has written a sentence);
- **gaps**: stalls of a player that starts at the first frame and plays what arrives, between
  sentences and inside them (zero: no gap a listener hears);
- **barge-in**: from ``cancel`` to ``cancelled`` and to the last audio frame of the cancelled
  context (frames after ``cancelled`` would be a bug and are counted), and from ``cancel`` to the
  first byte of an HTTP request that was queued behind the cancelled sentence (the freed slot).

On a fresh local service by default (``unshare -n`` on a shared machine), or ``--url``:

    .venv/bin/python benchmarks/ws_latency.py --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
import websockets
from common import local_service, png, save, summary, table

TEXTS = {
    "zh": "你好，我是你的语音助手。今天北京晴，最高气温二十五度。需要我帮你安排下午的会议吗？",
    "en": "Hi, I am your voice assistant. Today in Beijing it is sunny, up to 25 degrees. "
    "Shall I set up your afternoon meeting?",
}
STEPS_PER_SENTENCE = 40  # the synthetic model always speaks to max_len: about 1.3 s of audio a sentence
LONG_TEXT = "这是一段很长的回答，用来测试打断。" * 4


def tokens(text: str) -> list[str]:
    """An LLM-like tokenization: English words with their leading space, Chinese in pairs of characters."""
    pieces = re.findall(r" ?[A-Za-z0-9']+|[,.!?]|[\u4e00-\u9fff]{1,2}|[^\sA-Za-z0-9\u4e00-\u9fff]", text)
    return pieces


@dataclass
class Run:
    """One replayed answer: when each token left and each event arrived (seconds since the first token)."""

    sent: list[tuple[float, str]] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)  # binary frames as {"type": "audio", "samples"}
    sample_rate: int = 0

    def first_audio_after_sentence_s(self) -> float:
        first_end = next(t for t, token in self.sent if re.search(r"[。！？.!?]", token))
        first_audio = next(t for t, event in self.events if event["type"] == "audio")
        return first_audio - first_end

    def stalls(self) -> dict[str, float]:
        """Seconds a player starting at the first frame waits for audio: between sentences and inside them."""
        played_until, between, inside, new_segment = None, 0.0, 0.0, False
        for arrival, event in self.events:
            if event["type"] == "segment":
                new_segment = True
            if event["type"] != "audio":
                continue
            if played_until is None:
                played_until, new_segment = arrival, False
            elif arrival > played_until:
                if new_segment:
                    between += arrival - played_until
                else:
                    inside += arrival - played_until
                played_until = arrival
            new_segment = False
            played_until += event["samples"] / self.sample_rate
        return {"between_s": between, "inside_s": inside}

    def speed(self) -> float:
        """Seconds of audio per second from the first frame to the last: below 1, the model itself is
        slower than real time and stalls inside sentences are the model's, not the socket's."""
        frames = [(t, e["samples"]) for t, e in self.events if e["type"] == "audio"]
        return sum(n for _, n in frames) / self.sample_rate / max(frames[-1][0] - frames[0][0], 1e-9)


async def replay(url: str, text: str, tokens_per_s: float, **init: object) -> Run:
    """The text sent token by token on one socket (``init``: more init fields), every event timed."""
    run = Run()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "max_len": STEPS_PER_SENTENCE, **init}))
        run.sample_rate = json.loads(await ws.recv())["sample_rate"]
        started = time.perf_counter()

        async def write() -> None:
            for token in tokens(text):
                await ws.send(json.dumps({"type": "text", "text": token}))
                run.sent.append((time.perf_counter() - started, token))
                await asyncio.sleep(1 / tokens_per_s)
            await ws.send(json.dumps({"type": "end"}))

        writer = asyncio.create_task(write())
        async for message in ws:
            now = time.perf_counter() - started
            event = (
                {"type": "audio", "samples": len(message) // 2} if isinstance(message, bytes) else json.loads(message)
            )
            run.events.append((now, event))
            if event["type"] in ("done", "error"):
                break
        await writer
    return run


async def barge_in(url: str, http_url: str) -> dict[str, Any]:
    """Cancel a long sentence while an HTTP request waits behind it; when does everything stop and start?"""
    queued: dict[str, float] = {}

    def http_request() -> None:
        with requests.post(f"{http_url}/api/tts/stream", data={"text": "下一位", "max_len": 4}, stream=True) as r:
            next(r.iter_content(chunk_size=None))
            queued["first_byte"] = time.perf_counter()

    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "init", "max_len": 1500}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": LONG_TEXT}))
        await ws.send(json.dumps({"type": "flush"}))
        while not isinstance(await ws.recv(), bytes):
            pass
        waiter = threading.Thread(target=http_request)
        waiter.start()
        await asyncio.sleep(1.0)  # the request is queued behind the sentence (one generation at a time)
        cancel_sent = time.perf_counter()
        await ws.send(json.dumps({"type": "cancel"}))
        last_frame, late_frames = cancel_sent, 0
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                last_frame = time.perf_counter()
            elif json.loads(message)["type"] == "cancelled":
                cancelled = time.perf_counter()
                break
        try:
            message = await asyncio.wait_for(ws.recv(), 0.5)
            late_frames += isinstance(message, bytes)
        except TimeoutError:
            pass
        await asyncio.to_thread(waiter.join)
    return {
        "cancel_to_cancelled_ms": 1e3 * (cancelled - cancel_sent),
        "cancel_to_silence_ms": 1e3 * (last_frame - cancel_sent),
        "frames_after_cancelled": late_frames,
        "cancel_to_next_request_first_byte_ms": 1e3 * (queued["first_byte"] - cancel_sent),
    }


def plot(run: Run, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 2.6))
    axis.eventplot([[t for t, _ in run.sent]], lineoffsets=2, colors="tab:gray", linelengths=0.6)
    played_until = None
    for arrival, event in run.events:
        if event["type"] == "audio":
            start = arrival if played_until is None else max(arrival, played_until)
            played_until = start + event["samples"] / run.sample_rate
            axis.broken_barh([(start, played_until - start)], (0.7, 0.6), color="tab:blue")
            axis.plot([arrival], [0.4], "|", color="tab:orange")
    axis.set_yticks([0.4, 1, 2], ["audio arrives", "playback", "tokens sent"])
    axis.set_xlabel("seconds since the first token")
    axis.set_title(f"{name}: an LLM's tokens at 20/s, speech sentence by sentence")
    png(figure, "ws_latency")


def measure(base: str, repeat: int, tokens_per_s: float) -> dict[str, Any]:
    url = base.replace("http", "ws", 1) + "/api/tts/ws"
    asyncio.run(replay(url, "热身。", tokens_per_s))  # warm the path
    results: dict[str, Any] = {}
    for language, text in TEXTS.items():
        runs = [asyncio.run(replay(url, text, tokens_per_s)) for _ in range(repeat)]
        results[language] = {
            "first_audio_after_sentence_ms": summary([1e3 * r.first_audio_after_sentence_s() for r in runs]),
            "stall_between_sentences_ms": summary([1e3 * r.stalls()["between_s"] for r in runs]),
            "stall_inside_sentences_ms": summary([1e3 * r.stalls()["inside_s"] for r in runs]),
            "audio_s_per_s": summary([r.speed() for r in runs]),
            "sentences": sum(e["type"] == "segment" for _, e in runs[0].events),
        }
        if language == "en":
            plot(runs[0], "English")
    cancels = [asyncio.run(barge_in(url, base)) for _ in range(repeat)]
    results["barge_in"] = {name: summary([c[name] for c in cancels]) for name in cancels[0]}
    return results


def markdown(results: dict[str, Any], tokens_per_s: float) -> str:
    rows = []
    for language in TEXTS:
        r = results[language]
        rows.append(
            [
                language,
                r["sentences"],
                f"{r['first_audio_after_sentence_ms']['median']:.0f}",
                f"{r['stall_between_sentences_ms']['max']:.0f}",
                f"{r['stall_inside_sentences_ms']['max']:.0f}",
                f"{r['audio_s_per_s']['median']:.2f}",
            ]
        )
    cancel = results["barge_in"]
    return (
        f"# WebSocket latency: an LLM's tokens at {tokens_per_s:g}/s\n\n"
        + table(
            [
                "text",
                "sentences",
                "first audio after its last token (ms, p50)",
                "stall between (ms, max)",
                "stall inside (ms, max)",
                "audio s per s (p50)",
            ],
            rows,
        )
        + "\n"
        + table(
            ["barge-in", "p50 ms", "max ms"],
            [[name, f"{s['median']:.0f}", f"{s['max']:.0f}"] for name, s in cancel.items()],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: a fresh local one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    args = parser.parse_args()
    if args.url:
        results = measure(args.url, args.repeat, args.tokens_per_s)
    else:
        with local_service() as base:
            results = measure(base, args.repeat, args.tokens_per_s)
    save("ws_latency", {"tokens_per_s": args.tokens_per_s, "results": results}, markdown(results, args.tokens_per_s))


if __name__ == "__main__":
    main()
