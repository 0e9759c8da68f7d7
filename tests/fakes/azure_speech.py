"""A local fake of the Azure AI Speech service's websocket protocol (USP), as the
official Speech SDK speaks it when its ``host`` is ``ws://127.0.0.1:PORT``.

Messages (both ways): text frames are ``Name:value`` header lines, a blank line and a
body (JSON, or SSML); binary frames are a 2-byte big-endian header length, the header
lines and the payload. Every message names its ``Path`` and the turn's ``X-RequestId``.

Speech-to-text (``/speech/recognition/{interactive,conversation,dictation}/
cognitiveservices/v1``: ``interactive`` for a single-shot recognition, ``conversation``
for a continuous one; with a ``host``, SDK 1.53 keeps these paths even for continuous
language identification, and ``/stt/speech/universal/v2`` is accepted too): the client
sends ``speech.config``, ``speech.context`` (language candidates, output format), then
``audio`` frames (a RIFF/WAV header first, an empty frame at the end of the stream);
the fake answers ``turn.start``, then per scripted phrase ``speech.startDetected``,
``speech.hypothesis``, ``speech.phrase`` and ``speech.endDetected``, and ``turn.end``.
Phrases carry ``PrimaryLanguage`` when the client asked for language identification
(the scripted locale if it was a candidate, else the first candidate) and ``NBest``
when it asked for the detailed format. Digital silence gets an
``InitialSilenceTimeout`` phrase, whatever the script says.

Text-to-speech (``/cognitiveservices/websocket/v1``): the client sends
``speech.config``, ``synthesis.context`` (the output format) and ``ssml``; the fake
checks the SSML (``speak`` root with ``xml:lang``, a ``voice`` with a name) and answers
``turn.start``, the audio in ``audio`` binary frames (a real OGG/Opus voice note) and
``turn.end``; bad SSML closes the socket with 1007, as the service does.

The key is checked on the upgrade request (``Ocp-Apim-Subscription-Key``: 401
otherwise); scripted failures answer the next upgrades with an HTTP status. Everything
received is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.google_speech import voice_note
from tests.fakes.server import serve

TICKS = 10_000_000  # offsets and durations are in 100-ns ticks
RECOGNITION = re.compile(
    r"^/speech/recognition/(interactive|conversation|dictation)/cognitiveservices/v1$"
    r"|^/stt/speech/universal/v2$"
)
SYNTHESIS = "/cognitiveservices/websocket/v1"
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


@dataclass
class Phrase:
    text: str
    locale: str = "es-ES"
    confidence: float = 0.9


@dataclass
class Recognition:
    """One recognition turn as the fake received it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    speech_config: dict[str, Any] = field(default_factory=dict)
    speech_context: dict[str, Any] = field(default_factory=dict)
    wav_format: tuple[int, int, int, int] = (0, 0, 0, 0)  # format tag, channels, rate, bits
    audio_bytes: int = 0
    peak: int = 0  # largest absolute 16-bit sample
    ended: bool = False

    @property
    def candidates(self) -> list[str]:
        lid = self.speech_context.get("languageId") or {}
        return list(lid.get("languages") or [])


@dataclass
class Synthesis:
    path: str
    headers: dict[str, str]
    speech_config: dict[str, Any] = field(default_factory=dict)
    synthesis_context: dict[str, Any] = field(default_factory=dict)
    ssml: str = ""

    @property
    def output_format(self) -> str:
        return str(self.synthesis_context.get("synthesis", {}).get("audio", {}).get("outputFormat"))


def parse_headers(block: str) -> dict[str, str]:
    headers = {}
    for line in block.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def text_message(path: str, request_id: str, body: dict[str, Any]) -> str:
    return (
        f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
        f"Path:{path}\r\n\r\n{json.dumps(body)}"
    )


def binary_message(path: str, request_id: str, payload: bytes) -> bytes:
    head = f"X-RequestId:{request_id}\r\nPath:{path}\r\nContent-Type:audio/ogg\r\n".encode()
    return struct.pack(">H", len(head)) + head + payload


class FakeAzureSpeech:
    def __init__(self, key: str) -> None:
        self.key = key
        self.recognitions: list[Recognition] = []
        self.syntheses: list[Synthesis] = []
        self.rejected: list[tuple[str, int]] = []  # (path, status) of refused upgrades
        self.failures: list[int] = []
        self.answers: list[list[Phrase]] = []
        self.audio = b""
        self.sockets: set[web.WebSocketResponse] = set()
        self.runner: web.AppRunner | None = None
        self.host = ""

    def answer(self, *phrases: Phrase) -> None:
        """What the next recognition hears (no phrases: silence)."""
        self.answers.append(list(phrases))

    def fail_next(self, status: int, count: int = 1) -> None:
        """Refuse the next ``count`` websocket upgrades with HTTP ``status``."""
        self.failures.extend([status] * count)

    async def start(self) -> str:
        self.audio = await asyncio.to_thread(voice_note)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner, url = await serve(app)
        self.host = url.replace("http://", "ws://")
        return self.host

    async def close(self) -> None:
        for ws in list(self.sockets):  # the SDK may not have hung up yet
            await ws.close(code=1001, message=b"shutting down")
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        kind = "stt" if RECOGNITION.match(path) else "tts" if path == SYNTHESIS else ""
        status = 0
        if not kind:
            status = 404
        elif request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
            status = 401
        elif self.failures:
            status = self.failures.pop(0)
        if status:
            self.rejected.append((path, status))
            return web.json_response(
                {"error": {"code": status, "message": "refused"}}, status=status
            )
        ws = web.WebSocketResponse(protocols=("USP",), timeout=2)
        await ws.prepare(request)
        self.sockets.add(ws)
        headers = dict(request.headers)
        try:
            if kind == "stt":
                turn = Recognition(path, dict(request.query), headers)
                self.recognitions.append(turn)
                await self._recognize(ws, turn)
            else:
                synthesis = Synthesis(path, headers)
                self.syntheses.append(synthesis)
                await self._synthesize(ws, synthesis)
        finally:
            self.sockets.discard(ws)
        return ws

    # ------------------------------------------------------------------ speech-to-text

    async def _recognize(self, ws: web.WebSocketResponse, turn: Recognition) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                head, _, body = msg.data.partition("\r\n\r\n")
                path = parse_headers(head).get("path", "")
                if path == "speech.config":
                    turn.speech_config = json.loads(body)
                elif path == "speech.context":
                    turn.speech_context = json.loads(body)
            elif msg.type == WSMsgType.BINARY:
                size = struct.unpack_from(">H", msg.data)[0]
                headers = parse_headers(msg.data[2 : 2 + size].decode())
                payload = msg.data[2 + size :]
                request_id = headers.get("x-requestid", uuid.uuid4().hex)
                if headers.get("path") != "audio":
                    continue
                if payload[:4] == b"RIFF":
                    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", payload, 20)
                    turn.wav_format = (tag, channels, rate, bits)
                    await ws.send_str(text_message("turn.start", request_id, {"context": {}}))
                    continue
                if payload:
                    turn.audio_bytes += len(payload)
                    samples = memoryview(payload[: len(payload) // 2 * 2]).cast("h")
                    turn.peak = max(turn.peak, max((abs(s) for s in samples), default=0))
                    continue
                turn.ended = True
                await self._answer(ws, turn, request_id)

    async def _answer(self, ws: web.WebSocketResponse, turn: Recognition, request_id: str) -> None:
        seconds = turn.audio_bytes / 32000
        phrases = self.answers.pop(0) if self.answers else []
        if turn.peak == 0:
            phrases = []  # digital silence: nothing to hear, whatever the script says
        detailed = (turn.speech_context.get("phraseOutput") or {}).get("format") == "Detailed"
        candidates = turn.candidates
        for i, phrase in enumerate(phrases):
            offset = int(seconds * i / len(phrases) * TICKS)
            duration = int(seconds / len(phrases) * TICKS)
            body: dict[str, Any] = {
                "RecognitionStatus": "Success",
                "DisplayText": phrase.text,
                "Offset": offset,
                "Duration": duration,
            }
            if candidates:
                locale = phrase.locale if phrase.locale in candidates else candidates[0]
                body["PrimaryLanguage"] = {"Language": locale, "Confidence": "High"}
            if detailed:
                lexical = re.sub(r"[^\w\s]", "", phrase.text).lower()
                body["NBest"] = [
                    {
                        "Confidence": phrase.confidence,
                        "Lexical": lexical,
                        "ITN": lexical,
                        "MaskedITN": lexical,
                        "Display": phrase.text,
                    }
                ]
            hypothesis = {"Text": phrase.text.lower(), "Offset": offset, "Duration": duration}
            for path, message in (
                ("speech.startDetected", {"Offset": offset}),
                ("speech.hypothesis", hypothesis),
                ("speech.phrase", body),
                ("speech.endDetected", {"Offset": offset + duration}),
            ):
                await ws.send_str(text_message(path, request_id, message))
        if not phrases:
            silence = {
                "RecognitionStatus": "InitialSilenceTimeout",
                "Offset": 0,
                "Duration": int(seconds * TICKS),
            }
            await ws.send_str(text_message("speech.phrase", request_id, silence))
        await ws.send_str(text_message("turn.end", request_id, {}))

    # ------------------------------------------------------------------ text-to-speech

    async def _synthesize(self, ws: web.WebSocketResponse, synthesis: Synthesis) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            head, _, body = msg.data.partition("\r\n\r\n")
            headers = parse_headers(head)
            path = headers.get("path", "")
            if path == "speech.config":
                synthesis.speech_config = json.loads(body)
            elif path == "synthesis.context":
                synthesis.synthesis_context = json.loads(body)
            elif path == "ssml":
                synthesis.ssml = body
                problem = ssml_problem(body)
                if problem:
                    await ws.close(code=1007, message=problem.encode())
                    return
                request_id = headers.get("x-requestid", uuid.uuid4().hex)
                await ws.send_str(text_message("turn.start", request_id, {"context": {}}))
                half = len(self.audio) // 2
                for chunk in (self.audio[:half], self.audio[half:]):
                    await ws.send_bytes(binary_message("audio", request_id, chunk))
                await ws.send_str(text_message("turn.end", request_id, {}))


def ssml_problem(ssml: str) -> str:
    """Why the service would refuse this SSML ('' when it is fine)."""
    try:
        root = ET.fromstring(ssml)
    except ET.ParseError as e:
        return f"Invalid SSML: {e}"
    if root.tag != f"{SSML_NS}speak" or not root.get(XML_LANG):
        return "Invalid SSML: expected <speak> with xml:lang"
    voice = root.find(f"{SSML_NS}voice")
    if voice is None or not voice.get("name"):
        return "Unsupported voice: a <voice name=...> is required"
    return ""
