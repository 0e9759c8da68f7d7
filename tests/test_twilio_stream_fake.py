"""The fake Twilio Media Stream against a tiny WebSocket stub written here (not habla's server).

The stub checks ``X-Twilio-Signature`` like a real server would (closing with 1008 when it
is wrong), hands each accepted socket to the test, and queues what the fake sends so the
test can await it. Playback is checked on the fake's own playback clock (bytes of audio
played when a mark was echoed), never on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from tests.fakes.twilio_stream import (
    FRAME_BYTES,
    ULAW_RATE,
    FakeMediaStream,
    pcm16k_to_ulaw,
    ulaw_to_pcm16k,
)

AUTH_TOKEN = "stub-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "0" * 31 + "7"
CALL_SID = "CA" + "0" * 31 + "9"
PATH = "/twilio/stream"
PUBLIC_WSS_URL = "wss://bot.example.com" + PATH
TIMEOUT = 10.0


def tone(seconds: float, hz: float = 440.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float64) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class StubSocket:
    """The server's side of one accepted stream, driven by the test."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: closed
        self.stream_sid = ""
        self.close_code: int = WSCloseCode.OK

    async def next(self, event: str | None = None) -> dict[str, Any]:
        """The next message the fake sent (of ``event``, skipping others)."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            assert msg is not None, "the socket closed"
            if event is None or msg["event"] == event:
                return msg

    async def closed(self) -> None:
        while await asyncio.wait_for(self.inbox.get(), TIMEOUT) is not None:
            pass

    async def close(self, code: int) -> None:
        """The server hangs up. (The handler's own loop may get to ``close()`` first.)"""
        self.close_code = code
        await self.ws.close(code=code, message=b"bye")

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_audio(self, ulaw: bytes, chunk: int = FRAME_BYTES) -> None:
        for i in range(0, len(ulaw), chunk):
            payload = base64.b64encode(ulaw[i : i + chunk]).decode()
            await self.send(
                {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
            )

    async def send_mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def send_clear(self) -> None:
        await self.send({"event": "clear", "streamSid": self.stream_sid})


class Stub:
    def __init__(self) -> None:
        self.validator = RequestValidator(AUTH_TOKEN)
        self.accepted: asyncio.Queue[StubSocket] = asyncio.Queue()
        self.refused = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if not signature or not self.validator.validate(PUBLIC_WSS_URL, {}, signature):
            self.refused += 1
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad signature")
            return ws
        sock = StubSocket(ws)
        self.accepted.put_nowait(sock)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["event"] == "start":
                    sock.stream_sid = data["start"]["streamSid"]
                sock.inbox.put_nowait(data)
        await ws.close(code=sock.close_code)
        sock.inbox.put_nowait(None)
        return ws


Call = tuple[FakeMediaStream, StubSocket]


@pytest.fixture
async def stub() -> AsyncIterator[tuple[TestClient, Stub]]:
    stub = Stub()
    app = web.Application()
    app.router.add_get(PATH, stub.handle)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, stub
    await client.close()


@pytest.fixture
async def call(
    stub: tuple[TestClient, Stub],
) -> AsyncIterator[Callable[..., Awaitable[Call]]]:
    client, server = stub
    fakes: list[FakeMediaStream] = []

    async def start(**params: str) -> Call:
        fake = FakeMediaStream()
        fakes.append(fake)
        await fake.connect(
            client,
            PATH,
            PUBLIC_WSS_URL,
            AUTH_TOKEN,
            {"lang": "es"},
            call_sid=CALL_SID,
            account_sid=ACCOUNT_SID,
            **params,
        )
        sock = await asyncio.wait_for(server.accepted.get(), TIMEOUT)
        assert (await sock.next())["event"] == "connected"
        await sock.next("start")
        return fake, sock

    yield start
    for fake in fakes:
        await fake.aclose()


async def test_connect_signs_the_wss_url_and_sends_connected_then_start(
    stub: tuple[TestClient, Stub],
) -> None:
    client, server = stub
    fake = FakeMediaStream()
    await fake.connect(
        client, PATH, PUBLIC_WSS_URL, AUTH_TOKEN, {"lang": "es", "to": "+1415"}, call_sid=CALL_SID
    )
    sock = await asyncio.wait_for(server.accepted.get(), TIMEOUT)
    connected, start = await sock.next(), await sock.next()
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["streamSid"] == start["start"]["streamSid"] == fake.stream_sid
    assert fake.stream_sid.startswith("MZ") and len(fake.stream_sid) == 34
    assert start["start"]["callSid"] == CALL_SID
    assert start["start"]["accountSid"] == fake.account_sid
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["customParameters"] == {"lang": "es", "to": "+1415"}
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    assert server.refused == 0 and not fake.closed
    await fake.aclose()


@pytest.mark.parametrize("signature", ["bad", "missing"])
async def test_forged_or_missing_signature_is_refused_with_1008(
    stub: tuple[TestClient, Stub], signature: str
) -> None:
    client, server = stub
    fake = FakeMediaStream()
    await fake.connect(client, PATH, PUBLIC_WSS_URL, AUTH_TOKEN, {}, signature=signature)
    await fake.wait_for(lambda f: f.closed, TIMEOUT)
    assert fake.close_code == 1008
    assert server.refused == 1 and server.accepted.empty()
    # once the server has closed, the caller's audio goes nowhere
    assert await fake.play(b"\xff" * FRAME_BYTES, realtime=False) is None
    await fake.aclose()


async def test_mark_is_echoed_only_after_the_audio_before_it_has_played(
    call: Callable[..., Awaitable[Call]],
) -> None:
    fake, sock = await call()
    first = pcm16k_to_ulaw(tone(0.5))
    second = pcm16k_to_ulaw(tone(0.1, 880.0))
    assert len(first) == 4000
    await sock.send_audio(first, chunk=1000)  # chunks need not be whole frames
    await sock.send_mark("first-done")
    await sock.send_audio(second)
    await sock.send_mark("second-done")

    echo = await sock.next("mark")
    assert echo["mark"] == {"name": "first-done"}
    assert echo["streamSid"] == fake.stream_sid
    # when the echo reached the server, exactly the audio before the mark had been played
    first_echo = fake.marks[0]
    assert first_echo.name == "first-done" and not first_echo.cleared
    assert first_echo.position == len(first)
    assert first_echo.played_seconds == pytest.approx(0.5)
    assert fake.heard[: len(first)] == first

    echo = await sock.next("mark")
    assert echo["mark"] == {"name": "second-done"}
    assert [(m.name, m.position) for m in fake.marks] == [
        ("first-done", len(first)),
        ("second-done", len(first) + len(second)),
    ]
    assert fake.heard == first + second
    assert fake.playback_seconds == pytest.approx(0.6)
    assert fake.pending_audio == 0 and fake.clears == 0 and fake.errors == []
    # the echoes are numbered after ``start`` in the order they were sent
    numbers = [int(msg["sequenceNumber"]) for _, msg in fake.sent if msg["event"] == "mark"]
    assert numbers == [2, 3]
    # every outbound message was recorded on arrival, in order, on the monotonic clock
    times = [at for at, _ in fake.received]
    assert times == sorted(times)
    assert [msg["event"] for _, msg in fake.received][-2:] == ["media", "mark"]


async def test_clear_drops_unplayed_audio_and_echoes_pending_marks_at_once(
    call: Callable[..., Awaitable[Call]],
) -> None:
    fake, sock = await call()
    long = pcm16k_to_ulaw(tone(5.0))
    await sock.send_audio(long)
    await sock.send_mark("sentence-1")
    await sock.send_audio(pcm16k_to_ulaw(tone(1.0)))
    await sock.send_mark("sentence-2")
    await fake.wait_for(lambda f: len(f.heard) >= 2 * FRAME_BYTES, TIMEOUT)

    await sock.send_clear()
    assert (await sock.next("mark"))["mark"]["name"] == "sentence-1"
    assert (await sock.next("mark"))["mark"]["name"] == "sentence-2"
    assert fake.clears == 1 and len(fake.clear_times) == 1
    clear_at = fake.clear_times[0]
    assert all(m.cleared and m.at >= clear_at for m in fake.marks)
    # both marks came back at the same point of playback: nothing played in between
    played_at_clear = fake.marks[0].position
    assert fake.marks[1].position == played_at_clear < len(long)
    assert played_at_clear % FRAME_BYTES == 0
    assert fake.heard == long[:played_at_clear]
    assert fake.dropped == len(long) + ULAW_RATE - played_at_clear
    assert fake.pending_audio == 0

    # playback resumes with what the server sends after the clear
    after = pcm16k_to_ulaw(tone(0.1, 660.0))
    await sock.send_audio(after)
    await sock.send_mark("after-clear")
    assert (await sock.next("mark"))["mark"]["name"] == "after-clear"
    last = fake.marks[-1]
    assert not last.cleared and last.position == played_at_clear + len(after)
    assert fake.heard == long[:played_at_clear] + after
    assert fake.errors == []


@pytest.mark.parametrize("realtime", [False, True])
async def test_play_sends_fifty_frames_a_second_with_consecutive_numbers(
    call: Callable[..., Awaitable[Call]], realtime: bool
) -> None:
    fake, sock = await call()
    seconds = 1.0 if not realtime else 0.2
    audio = tone(seconds)
    last_sent = await fake.play(audio, realtime=realtime)
    frames = [await sock.next("media") for _ in range(int(seconds * 50))]

    assert len(frames) == int(seconds * 50)
    assert [int(f["sequenceNumber"]) for f in frames] == list(range(2, 2 + len(frames)))
    assert [int(f["media"]["chunk"]) for f in frames] == list(range(1, 1 + len(frames)))
    stamps = [int(f["media"]["timestamp"]) for f in frames]
    assert stamps == list(range(stamps[0], stamps[0] + 20 * len(frames), 20))
    assert all(f["media"]["track"] == "inbound" for f in frames)
    assert all(f["streamSid"] == fake.stream_sid for f in frames)
    payloads = [base64.b64decode(f["media"]["payload"]) for f in frames]
    assert all(len(p) == FRAME_BYTES for p in payloads)
    assert b"".join(payloads) == pcm16k_to_ulaw(audio)
    assert last_sent == fake.sent[-1][0]
    if realtime:
        # paced: frame i is sent once its 20 ms are due (a lower bound, not performance)
        times = [at for at, msg in fake.sent if msg["event"] == "media"]
        assert all(t - times[0] >= 0.02 * i - 0.005 for i, t in enumerate(times))

    # a short tail is padded to a whole frame; silence() continues the numbering
    await fake.play(b"\x00" * 100, realtime=False)
    tail = await sock.next("media")
    assert base64.b64decode(tail["media"]["payload"]) == b"\x00" * 100 + b"\xff" * 60
    await fake.silence(0.04, realtime=False)
    quiet = [await sock.next("media"), await sock.next("media")]
    assert [int(f["media"]["chunk"]) for f in [tail, *quiet]] == [
        len(frames) + 1,
        len(frames) + 2,
        len(frames) + 3,
    ]
    assert all(base64.b64decode(f["media"]["payload"]) == b"\xff" * 160 for f in quiet)


async def test_press_sends_dtmf_and_hang_up_sends_stop_then_closes(
    call: Callable[..., Awaitable[Call]],
) -> None:
    fake, sock = await call()
    await fake.press("1")
    dtmf = await sock.next()
    assert dtmf == {
        "event": "dtmf",
        "sequenceNumber": "2",
        "streamSid": fake.stream_sid,
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
    await fake.hang_up()
    stop = await sock.next()
    assert stop == {
        "event": "stop",
        "sequenceNumber": "3",
        "streamSid": fake.stream_sid,
        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
    }
    await sock.closed()
    assert fake.closed and fake.close_code == 1000


async def test_server_closing_the_socket_is_recorded(
    call: Callable[..., Awaitable[Call]],
) -> None:
    fake, sock = await call()
    await sock.close(WSCloseCode.GOING_AWAY)
    await fake.wait_for(lambda f: f.closed, TIMEOUT)
    assert fake.close_code == 1001


async def test_protocol_errors_from_the_server_are_recorded(
    call: Callable[..., Awaitable[Call]],
) -> None:
    fake, sock = await call()
    await sock.send({"event": "media", "streamSid": "MZ-other", "media": {"payload": "/w=="}})
    await sock.send({"event": "media", "streamSid": fake.stream_sid, "media": {}})
    await sock.send({"event": "dance", "streamSid": fake.stream_sid})
    await fake.wait_for(lambda f: len(f.errors) == 3, TIMEOUT)
    assert fake.received_audio == b"" and fake.heard == b""


async def test_wait_for_times_out_with_the_state() -> None:
    fake = FakeMediaStream()
    with pytest.raises(TimeoutError, match="clears=0"):
        await fake.wait_for(lambda f: f.clears, timeout=0.05)


def test_ulaw_round_trip_keeps_the_sound() -> None:
    audio = tone(0.3)
    ulaw = pcm16k_to_ulaw(audio)
    assert len(ulaw) == 0.3 * ULAW_RATE
    back = ulaw_to_pcm16k(ulaw)
    assert back.dtype == np.float32 and abs(len(back) - len(audio)) <= 2  # ratecv's edges
    # ratecv's filters delay the signal by a sample or two: compare by correlation
    lag = int(np.argmax(np.correlate(back[:800], audio[:400], mode="valid")))
    n = min(len(back), len(audio)) - 10
    corr = np.corrcoef(back[lag : lag + n], audio[:n])[0, 1]
    assert corr > 0.99
    assert ulaw_to_pcm16k(b"").size == 0
