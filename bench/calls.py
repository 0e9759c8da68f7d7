"""Phone calls in stream mode: from the end of the caller's speech to the bot's voice.

    python -m bench.calls [--calls 1,4] [--turns 8] [--workers 1]

habla serves the example bot in-process (aiohttp test server, loopback) with the
offline engines (faster-whisper base, short encode; espeak-ng). A fake of Twilio's
side of a Media Stream (``tests/fakes/twilio_stream.py``) opens each call with a signed
upgrade, waits for the greeting to finish playing, then speaks real recordings
(Picovoice Leopard's es/pt/fr clips, their words up to 2.5 s) as μ-law 8 kHz at real-time pace,
followed by silence, as a phone line does. Measured per turn: the last voiced frame
sent → the first frame of the bot's audio received. Calls run concurrently.

Where the time goes (printed): the silence habla waits for to decide the caller
finished (``HABLA_CALL_MIN_SILENCE_MS``), speech-to-text, the turn, and the first
sentence's speech. Anchors: Twilio's own agent connector measured 2.2-2.5 s; Rasa 3.6's
``twilio_voice`` waits 5 s of silence before a turn even starts. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

PROJECT = Path(__file__).resolve().parent.parent
LEOPARD = PROJECT.parent / "shared/data/speech/picovoice-leopard/resources/audio_samples"
TOKEN = "bench-auth-token"
PUBLIC = "https://bench.example.com"
WSS = PUBLIC.replace("https://", "wss://") + "/webhooks/twilio_voice/stream"
CLIPS = ("test_es.wav", "test_pt.wav", "test_fr.wav")
STALLS: list[float] = []  # silences inside an answer, over every call of a run


def clip(name: str, seconds: float = 2.5) -> Any:
    """A recording's first words, cut at the end of the last word that ends before
    ``seconds`` (Leopard's word timings): a caller's short sentence, not a cut word."""
    meta = json.loads((LEOPARD.parent / ".test" / "test_data.json").read_text())
    words = next(t["words"] for t in meta["tests"]["language_tests"] if t["audio_file"] == name)
    end = max(float(w["end_sec"]) for w in words if float(w["end_sec"]) <= seconds)
    with wave.open(str(LEOPARD / name)) as w:
        raw = w.readframes(w.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return samples[: int((end + 0.05) * 16000)]


async def greeting_played(stream: Any) -> None:
    """Every mark the server sent has come back and nothing is left to play."""

    def done(s: Any) -> bool:
        return bool(s.marks) and len(s.marks) == len(s.events("mark")) and not s.pending_audio

    await stream.wait_for(done, timeout=120)


async def open_call(client: TestClient, index: int, serial: int) -> Any:
    from tests.fakes.twilio_stream import FakeMediaStream

    stream = FakeMediaStream()
    await stream.connect(
        client,
        "/webhooks/twilio_voice/stream",
        WSS,
        TOKEN,
        {"from": f"+3460090{index:04d}"},
        call_sid=f"CA{index:04d}{serial:028d}",
    )
    await greeting_played(stream)
    return stream


class LoopLag:
    """How late a 20 ms timer fires on the server's event loop (the pace of a call's
    audio frames): Rasa, speech models or synthesis on the loop show up here."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.02
            await asyncio.sleep(0.02)
            self.lags.append(loop.time() - due)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._probe())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def one_call(client: TestClient, index: int, turns: int) -> tuple[list[float], int]:
    """``turns`` measured answers; a call the bot ends (it heard "goodbye" or "a
    person" in a clip) is dialled again. Returns the latencies and the calls made."""
    calls = 1
    stream = await open_call(client, index, calls)
    out: list[float] = []
    stalls: list[float] = []
    turn = 0
    while len(out) < turns:
        if stream.closed:
            stalls += stream.stalls
            await stream.aclose()
            calls += 1
            stream = await open_call(client, index, calls)
        await stream.silence(0.4)
        last_voiced = await stream.play(clip(CLIPS[(index + turn) % len(CLIPS)]))
        turn += 1
        if last_voiced is None:
            continue

        def answered(s: Any, after: float = last_voiced) -> bool:
            return s.closed or s.first_received_at("media", after) is not None

        tail = asyncio.ensure_future(stream.silence(6.0))  # the line stays open
        await stream.wait_for(answered, 60)
        first = stream.first_received_at("media", last_voiced)
        if first is not None:
            out.append(first - last_voiced)
        await tail
        if not stream.closed:
            await greeting_played(stream)
    if not stream.closed:
        await stream.hang_up()
    await stream.aclose()
    STALLS.extend(stalls + stream.stalls)
    return out, calls


async def bench(concurrency: list[int], turns: int, workers: int) -> dict[int, Run]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from habla.server import RUNTIME, create_app
    from nlu.logs import configure_logging
    from runtime.settings import load_settings

    configure_logging(os.environ.get("HABLA_LOG_LEVEL", "WARNING"))
    data = tempfile.mkdtemp(prefix="habla-bench-calls-")
    env = {
        **os.environ,
        "HABLA_BOT_DIR": str(PROJECT),
        "HABLA_DATA_DIR": data,
        "HABLA_PUBLIC_URL": PUBLIC,
        "TWILIO_ACCOUNT_SID": "AC" + "c" * 32,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "HABLA_CALL_MODE": "stream",
        "HABLA_ENGINE_WORKERS": str(workers),
        "HABLA_CHANNELS": "twilio_voice",
    }
    app = create_app(load_settings(env=env))
    client = TestClient(TestServer(app))
    await client.start_server()
    runtime = app[RUNTIME]
    await asyncio.gather(*runtime._warmups)  # speech models loaded, as in service
    results: dict[int, Run] = {}
    try:
        for n in concurrency:
            STALLS.clear()
            with LoopLag() as lag:
                per_call = await asyncio.gather(*(one_call(client, i, turns) for i in range(n)))
            results[n] = Run([x for call, _ in per_call for x in call], lag.lags, list(STALLS))
    finally:
        await client.close()
    return results


@dataclass
class Run:
    latencies: list[float]  # seconds: end of the caller's speech → the bot's first audio
    lags: list[float]  # seconds a 20 ms timer fired late on the server's loop
    stalls: list[float]  # seconds of silence inside one answer, as the caller heard it


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,4", help="concurrent calls, comma-separated")
    parser.add_argument("--turns", type=int, default=8, help="measured turns per call")
    parser.add_argument(
        "--workers", type=int, default=1, help="HABLA_ENGINE_WORKERS (stream mode: at least 1)"
    )
    args = parser.parse_args()
    concurrency = [int(c) for c in args.calls.split(",") if c.strip()]
    began = time.monotonic()
    results = asyncio.run(bench(concurrency, args.turns, args.workers))
    silence_ms = int(os.environ.get("HABLA_CALL_MIN_SILENCE_MS", "600"))
    print(f"\nstream mode, offline engines, {os.cpu_count()} CPUs, workers={args.workers}")
    print("end of the caller's speech (last voiced frame) → first frame of the bot's voice\n")
    print("| concurrent calls | turns | p50 (ms) | p90 (ms) | max (ms) | mean (ms) |")
    print("|---|---|---|---|---|---|")
    for n, run in results.items():
        ms = [v * 1000 for v in run.latencies]
        print(
            f"| {n} | {len(ms)} | {pct(ms, 0.5):.0f} | {pct(ms, 0.9):.0f} | {max(ms):.0f} "
            f"| {statistics.mean(ms):.0f} |"
        )
    print("\naudio pace while calls run: how late a 20 ms timer fires on the server's loop,")
    print("and silences inside one answer (a sentence not ready when the previous one ended)\n")
    print("| concurrent calls | loop lag p50 (ms) | p99 (ms) | max (ms) | stalls | longest (ms) |")
    print("|---|---|---|---|---|---|")
    for n, run in results.items():
        lag = [v * 1000 for v in run.lags] or [0.0]
        longest = max(run.stalls, default=0.0) * 1000
        print(
            f"| {n} | {pct(lag, 0.5):.1f} | {pct(lag, 0.99):.1f} | {max(lag):.0f} "
            f"| {len(run.stalls)} | {longest:.0f} |"
        )
    print(
        f"\nof which {silence_ms} ms is the silence that ends an utterance "
        "(HABLA_CALL_MIN_SILENCE_MS); anchors: Twilio's agent connector 2,200-2,500 ms, "
        "Rasa 3.6 twilio_voice 5,000 ms of silence before the turn starts"
    )
    print(f"(run took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
