"""Twilio's end of a bidirectional Media Stream (``<Connect><Stream>``), as a test drives it.

The fake opens the WebSocket the way Twilio does: the upgrade carries
``X-Twilio-Signature``, Twilio's HMAC-SHA1 of the ``wss://`` URL (no POST params). It then
speaks Twilio's messages: ``connected``, ``start`` (with the ``customParameters`` of the
``<Stream>``), the caller's audio as ``media`` frames (20 ms of 8 kHz μ-law, 160 bytes,
base64) with increasing ``sequenceNumber``/``chunk``/``timestamp``, ``dtmf`` for keys and
``stop`` on hang-up.

What the server sends back is *played* like Twilio plays it: outbound ``media`` audio and
``mark`` messages go into one queue, in order; a background task plays the audio at real
time (20 ms per 160 bytes) into :attr:`FakeMediaStream.heard` and echoes each mark once
the audio queued before it has been played. ``clear`` drops the audio not yet played and
echoes the marks waiting behind it at once. Every message received is recorded with its
arrival time on the monotonic clock (:attr:`FakeMediaStream.received`), and every message
sent likewise (:attr:`FakeMediaStream.sent`), so a benchmark can measure "last voiced
frame sent → first audio frame received".

Tests wait with :meth:`FakeMediaStream.wait_for`, which wakes on every change of state (a
message received, a frame played, a mark echoed, the socket closed); its timeout only
stops a hang. The only sleeps are pacing: sending the caller's frames when their 20 ms is
due, and playing the server's audio at real time.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import binascii
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import TestClient
from twilio.request_validator import RequestValidator

ULAW_RATE = 8_000  # audio/x-mulaw, 8 kHz, mono
PCM_RATE = 16_000  # what the speech stack reads
FRAME_MS = 20
FRAME_BYTES = ULAW_RATE * FRAME_MS // 1000  # 160
ULAW_SILENCE = b"\xff"  # μ-law code of a zero sample
_WIDTH = 2  # audioop works on 16-bit samples here

Samples = npt.NDArray[np.float32]
Predicate = Callable[["FakeMediaStream"], object]


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex  # 34 characters, like Twilio's SIDs


def pcm16k_to_ulaw(pcm: npt.NDArray[Any], rate: int = PCM_RATE) -> bytes:
    """8 kHz μ-law from mono PCM (float samples in [-1, 1] or int16) at ``rate``."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        arr = np.clip(np.round(arr.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    lin = arr.astype("<i2", copy=False).tobytes()
    if not lin:
        return b""
    if rate != ULAW_RATE:
        lin, _ = audioop.ratecv(lin, _WIDTH, 1, rate, ULAW_RATE, None)
    return audioop.lin2ulaw(lin, _WIDTH)


def ulaw_to_pcm16k(ulaw: bytes) -> Samples:
    """16 kHz float32 samples in [-1, 1] from 8 kHz μ-law (what the caller heard)."""
    if not ulaw:
        return np.zeros(0, dtype=np.float32)
    lin = audioop.ulaw2lin(bytes(ulaw), _WIDTH)
    up, _ = audioop.ratecv(lin, _WIDTH, 1, ULAW_RATE, PCM_RATE, None)
    return (np.frombuffer(up, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


@dataclass(frozen=True)
class EchoedMark:
    """A mark the server sent, echoed back by the fake."""

    name: str
    at: float  # monotonic time the echo was sent
    position: int  # bytes of audio played (len(heard)) when it was echoed
    cleared: bool  # echoed because a ``clear`` dropped the audio before it

    @property
    def played_seconds(self) -> float:
        """The fake's playback clock when the mark was echoed."""
        return self.position / ULAW_RATE


@dataclass
class _Mark:
    name: str


class FakeMediaStream:
    """One caller's Media Stream: Twilio's side of the WebSocket."""

    def __init__(
        self,
        *,
        stream_sid: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_sid = stream_sid or _sid("MZ")
        self.account_sid = ""
        self.call_sid = ""
        self.clock = clock
        # what was sent and received, with monotonic times
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.errors: list[str] = []  # protocol errors in what the server sent
        # playback of what the server sent
        self.marks: list[EchoedMark] = []
        self.clears = 0
        self.clear_times: list[float] = []  # monotonic arrival time of each ``clear``
        self.dropped = 0  # bytes of audio dropped by ``clear`` before they were played
        self.received_audio = bytearray()  # every outbound media payload, in order
        # silences inside one answer: the caller heard all of a sentence before the next
        # one arrived (seconds each; marks name sentences "<turn>.<index>")
        self.stalls: list[float] = []
        self._starved: tuple[float, str] | None = None
        self._heard = bytearray()
        self._queue: deque[bytearray | _Mark] = deque()
        self._play_end: float | None = None  # when the last played frame finished
        self._generation = 0  # bumped by ``clear``: a frame playing across it is dropped
        self._queued = asyncio.Event()
        # the socket
        self.closed = False
        self.close_code: int | None = None
        self.handshake_status: int | None = None  # HTTP status if the upgrade was refused
        self._ws: ClientWebSocketResponse | None = None
        self._seq = 0
        self._chunk = 0
        self._last_ts = -FRAME_MS
        self._started_at = 0.0
        self._audio_end: float | None = None  # end of the caller's last frame sent
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- state -------------------------------------------------------------------

    @property
    def heard(self) -> bytes:
        """μ-law audio the caller has heard so far (played, not dropped)."""
        return bytes(self._heard)

    @property
    def playback_seconds(self) -> float:
        """The fake's playback clock: seconds of the server's audio played so far."""
        return len(self._heard) / ULAW_RATE

    @property
    def mark_names(self) -> list[str]:
        """Names of the marks echoed so far, in order (played or cleared)."""
        return [m.name for m in self.marks]

    @property
    def pending_audio(self) -> int:
        """Bytes of the server's audio queued and not yet played."""
        return sum(len(item) for item in self._queue if isinstance(item, bytearray))

    def events(self, event: str) -> list[dict[str, Any]]:
        """Messages of one ``event`` type received from the server, in order."""
        return [msg for _, msg in self.received if msg.get("event") == event]

    def first_received_at(self, event: str = "media", after: float = float("-inf")) -> float | None:
        """Monotonic arrival time of the first ``event`` message received after ``after``."""
        for at, msg in self.received:
            if at >= after and msg.get("event") == event:
                return at
        return None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the call ----------------------------------------------------------------

    async def connect(
        self,
        client: TestClient,
        path: str,
        public_wss_url: str,
        auth_token: str,
        custom_parameters: Mapping[str, str] | None = None,
        *,
        call_sid: str | None = None,
        account_sid: str | None = None,
        signature: str | None = None,
    ) -> FakeMediaStream:
        """Open the stream's WebSocket at ``path`` and send ``connected`` then ``start``.

        ``public_wss_url`` is the full ``wss://`` URL of the ``<Stream>`` as Twilio signs it.
        ``signature``: ``None`` signs it with ``auth_token`` like Twilio; ``"bad"`` forges
        it (signed with another token); ``"missing"`` sends no header; any other string is
        sent as is. If the server refuses the upgrade, :attr:`handshake_status` holds the
        HTTP status and the stream is closed; a server that accepts and then closes the
        socket leaves its close code in :attr:`close_code`.
        """
        self.call_sid = call_sid or _sid("CA")
        self.account_sid = account_sid or _sid("AC")
        headers: dict[str, str] = {}
        if signature is None:
            headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
                public_wss_url, {}
            )
        elif signature == "bad":
            headers["X-Twilio-Signature"] = RequestValidator(
                "forged-" + auth_token
            ).compute_signature(public_wss_url, {})
        elif signature != "missing":
            headers["X-Twilio-Signature"] = signature
        try:
            self._ws = await client.ws_connect(path, headers=headers)
        except WSServerHandshakeError as exc:
            self.handshake_status = exc.status
            self.closed = True
            self.errors.append(f"upgrade refused: HTTP {exc.status}")
            self._notify()
            return self
        self._tasks = [
            asyncio.create_task(self._reader(), name="twilio-stream-reader"),
            asyncio.create_task(self._player(), name="twilio-stream-player"),
        ]
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._started_at = self.clock()
        await self._send(
            {
                "event": "start",
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(custom_parameters or {}),
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": ULAW_RATE,
                        "channels": 1,
                    },
                },
                "streamSid": self.stream_sid,
            },
            numbered=True,
        )
        return self

    async def play(
        self,
        audio: npt.NDArray[Any] | bytes,
        *,
        realtime: bool = True,
        rate: int = PCM_RATE,
    ) -> float | None:
        """Stream the caller's audio as 20 ms ``media`` frames.

        ``audio`` is mono PCM at ``rate`` (float32 in [-1, 1] or int16), or 8 kHz μ-law
        bytes; the last frame is padded with μ-law silence. With ``realtime`` each frame is
        sent when its 20 ms has been "spoken" (its end is due on the monotonic clock,
        continuing right after the previous ``play``/``silence`` if that just ended);
        otherwise as fast as possible. Returns the monotonic time the last frame was sent
        (``None`` if none was, e.g. the server closed the socket).
        """
        ulaw = bytes(audio) if isinstance(audio, bytes | bytearray) else pcm16k_to_ulaw(audio, rate)
        if len(ulaw) % FRAME_BYTES:
            ulaw += ULAW_SILENCE * (FRAME_BYTES - len(ulaw) % FRAME_BYTES)
        now = self.clock()
        start = now if self._audio_end is None else max(now, self._audio_end)
        last: float | None = None
        for i in range(0, len(ulaw), FRAME_BYTES):
            frame = ulaw[i : i + FRAME_BYTES]
            due = start + (i // FRAME_BYTES + 1) * FRAME_MS / 1000
            if realtime:
                delay = due - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing: the caller speaks in real time
                elapsed_ms = int(round((due - self._started_at) * 1000)) - FRAME_MS
                timestamp = max(self._last_ts + FRAME_MS, elapsed_ms)
                self._audio_end = due
            else:
                timestamp = self._last_ts + FRAME_MS
            self._chunk += 1
            self._last_ts = timestamp
            sent = await self._send(
                {
                    "event": "media",
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(timestamp),
                        "payload": base64.b64encode(frame).decode("ascii"),
                    },
                    "streamSid": self.stream_sid,
                },
                numbered=True,
            )
            if sent is None:
                return last
            last = sent
        return last

    async def silence(self, seconds: float, *, realtime: bool = True) -> float | None:
        """The caller says nothing for ``seconds`` (μ-law silence frames)."""
        frames = max(1, round(seconds * 1000 / FRAME_MS))
        return await self.play(ULAW_SILENCE * (frames * FRAME_BYTES), realtime=realtime)

    async def press(self, digit: str) -> float | None:
        """The caller presses a key: a ``dtmf`` event."""
        return await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            },
            numbered=True,
        )

    async def hang_up(self) -> None:
        """The caller hangs up: send ``stop``, then close the socket."""
        await self._send(
            {
                "event": "stop",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            },
            numbered=True,
        )
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket (without ``stop``) and stop the background tasks."""
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._finish()

    async def __aenter__(self) -> FakeMediaStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0) -> Any:
        """Wait until ``predicate(self)`` is true; return its value.

        Re-checked on every change of state (message received, frame played, mark
        echoed, socket closed). ``timeout`` only stops a hang: it raises ``TimeoutError``
        with a summary of the state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s: {self._summary()}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _summary(self) -> str:
        counts: dict[str, int] = {}
        for _, msg in self.received:
            event = str(msg.get("event"))
            counts[event] = counts.get(event, 0) + 1
        return (
            f"received={counts} heard={len(self._heard)}B pending={self.pending_audio}B "
            f"marks={self.mark_names} clears={self.clears} closed={self.closed} "
            f"close_code={self.close_code} handshake_status={self.handshake_status} "
            f"errors={self.errors}"
        )

    # -- sending -----------------------------------------------------------------

    async def _send(self, message: dict[str, Any], *, numbered: bool = False) -> float | None:
        """Send one message (numbering it in send order); its send time, or None if closed."""
        async with self._send_lock:
            ws = self._ws
            if ws is None or ws.closed or self.closed:
                return None
            if numbered:
                self._seq += 1
                event = message.pop("event")
                message = {"event": event, "sequenceNumber": str(self._seq), **message}
            try:
                await ws.send_str(json.dumps(message))
            except ConnectionError:
                return None
            at = self.clock()
            self.sent.append((at, message))
            return at

    async def _echo_mark(self, name: str, *, cleared: bool) -> None:
        self.marks.append(EchoedMark(name, self.clock(), len(self._heard), cleared))
        await self._send(
            {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}},
            numbered=True,
        )
        self._notify()

    # -- receiving ---------------------------------------------------------------

    async def _reader(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.errors.append("binary frame (Twilio reads JSON text messages)")
                elif msg.type == WSMsgType.ERROR:
                    self.errors.append(f"websocket error: {ws.exception()!r}")
                self._notify()
        finally:
            self._finish()

    def _finish(self) -> None:
        ws = self._ws
        self.closed = True
        if ws is not None and ws.close_code is not None:
            self.close_code = ws.close_code
        self._notify()

    async def _on_text(self, data: str) -> None:
        at = self.clock()
        try:
            msg = json.loads(data)
        except ValueError:
            self.errors.append(f"not JSON: {data[:80]!r}")
            return
        if not isinstance(msg, dict):
            self.errors.append(f"not a JSON object: {data[:80]!r}")
            return
        self.received.append((at, msg))
        event = msg.get("event")
        if msg.get("streamSid") != self.stream_sid:
            self.errors.append(f"{event}: streamSid {msg.get('streamSid')!r} is not this stream")
            return
        if event == "media":
            try:
                payload = base64.b64decode(msg["media"]["payload"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                self.errors.append(f"media without a base64 payload: {data[:80]!r}")
                return
            self.received_audio.extend(payload)
            ended = self._play_end
            if payload and not self.pending_audio and ended is not None and at > ended:
                if self.marks and self._starved is None:
                    self._starved = (at - ended, self.marks[-1].name)
            if payload:
                tail = self._queue[-1] if self._queue else None
                if isinstance(tail, bytearray):
                    tail.extend(payload)
                else:
                    self._queue.append(bytearray(payload))
                self._queued.set()
        elif event == "mark":
            name = (msg.get("mark") or {}).get("name")
            if not isinstance(name, str):
                self.errors.append(f"mark without a name: {data[:80]!r}")
                return
            starved, self._starved = self._starved, None
            if starved and starved[1].split(".")[0] == name.split(".")[0]:
                self.stalls.append(starved[0])
            self._queue.append(_Mark(name))
            self._queued.set()
        elif event == "clear":
            self.clears += 1
            self.clear_times.append(at)
            pending = [item for item in self._queue if isinstance(item, _Mark)]
            self.dropped += self.pending_audio
            self._queue.clear()
            self._generation += 1
            self._play_end = None
            for mark in pending:
                await self._echo_mark(mark.name, cleared=True)
        else:
            self.errors.append(f"unknown event {event!r}")

    # -- playback ----------------------------------------------------------------

    async def _player(self) -> None:
        """Play the queued audio at real time; echo each mark when it is reached."""
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            head = self._queue[0]
            if isinstance(head, _Mark):
                self._queue.popleft()
                await self._echo_mark(head.name, cleared=False)
                continue
            size = min(FRAME_BYTES, len(head))
            now = self.clock()
            begin = now if self._play_end is None else max(now, self._play_end)
            due = begin + size / ULAW_RATE
            generation = self._generation
            await asyncio.sleep(max(0.0, due - self.clock()))  # pacing: real-time playback
            if generation != self._generation:
                continue  # a ``clear`` dropped this frame while it was playing
            self._heard.extend(head[:size])
            del head[:size]
            if not head:
                self._queue.popleft()
            self._play_end = due
            self._notify()
