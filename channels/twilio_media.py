"""A phone call in ``stream`` mode: Twilio Media Streams, where habla hears and speaks.

The incoming-call webhook answers ``<Connect><Stream url="wss://…/webhooks/twilio_voice/
stream">`` (the caller's number as a ``<Parameter>``: Twilio drops query strings). The
WebSocket upgrade is verified with ``X-Twilio-Signature`` over the ``wss://`` URL and
refused with 403 when it is missing or wrong. Then, per call:

    μ-law 8 kHz frames ─► voice activity (runtime/speech.py CallListener, off the loop)
    ─► end of utterance ─► speech-to-text in the bot's languages ─► the turn
    ─► text-to-speech sentence by sentence ─► μ-law frames back, a ``mark`` after each

* **Barge-in.** When the caller starts speaking (enough voiced audio: a cough or an "mm"
  is not enough, ``HABLA_CALL_MIN_SPEECH_MS``) while the bot's audio is still playing,
  habla sends ``clear``, stops speaking the rest of that answer, and the caller's next
  message records which sentences were heard (their marks came back) and which were cut.
* **Keypad.** A digit picks a button when buttons were offered; otherwise digits are
  collected until ``#`` (an order number).
* **Ending.** When the bot says goodbye (``custom: {call: hangup}``) or hands over
  (``custom: {call: transfer}``), habla waits for the audio to be played and closes the
  stream; Twilio then follows the ``<Redirect>`` after ``<Connect>``, which hangs up or
  dials ``HABLA_CALL_TRANSFER_NUMBER``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from channels.base import ChannelServices
from channels.call_text import call_action, spoken
from runtime.errors import HablaError
from runtime.messages import BotReply, InboundMessage, mask_phone
from runtime.output import OutputChannel
from runtime.settings import Settings
from runtime.speech import CallSpeech, Utterance
from runtime.wire import WireError, loads_bounded


class CallChannel(Protocol):
    """What a stream session needs from the call channel (channels/twilio_voice.py)."""

    services: ChannelServices
    settings: Settings

    def call_message(
        self, call_sid: str, caller: str, called: str, turn: int, mode: str
    ) -> InboundMessage: ...

    def collector(self, call_sid: str) -> OutputChannel: ...

    async def end_stream(self, call_sid: str, action: str) -> None: ...


logger = logging.getLogger(__name__)

SENTENCE = re.compile(r"(?<=[.!?…])\s+")
MAX_DIGITS = 20


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s.strip()]


class MediaStreamSession:
    """One streamed call, from the ``start`` message to ``stop``."""

    def __init__(self, channel: CallChannel, ws: web.WebSocketResponse, speech: CallSpeech) -> None:
        self.channel, self.ws, self.speech = channel, ws, speech
        self.services = channel.services
        self.listener = speech.listener()
        self.stream_sid = ""
        self.call_sid = ""
        self.msg: InboundMessage | None = None
        self.turns = 0
        self.language = ""
        self.offered = False  # the last answer offered buttons (a digit picks one)
        self.digits = ""
        self.outstanding: list[str] = []  # marks sent, not yet echoed (audio still playing)
        self.heard: list[str] = []  # sentences of the current answer whose mark came back
        self.said: dict[str, str] = {}  # mark → sentence
        self.cut: list[str] = []  # sentences a barge-in cut off (told with the next turn)
        self.speaking: asyncio.Task[None] | None = None
        self.turn_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.played = asyncio.Event()

    # ---------------------------------------------------------------- receive

    async def run(self) -> None:
        try:
            async for message in self.ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    data = loads_bounded(message.data)
                except WireError:
                    logger.info("media stream: an unreadable message ignored")
                    continue
                if not isinstance(data, dict):
                    continue
                if await self._handle(data):
                    break
        finally:
            running = list(self.tasks) + ([self.speaking] if self.speaking else [])
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if self.call_sid:
                logger.info("media stream of call %s ended", self.call_sid)

    async def _handle(self, data: dict[str, Any]) -> bool:
        """One Twilio message; True when the stream is over."""
        event = data.get("event")
        if event == "start":
            await self._start(data.get("start") or {})
        elif event == "media" and self.msg is not None:
            payload = (data.get("media") or {}).get("payload")
            if isinstance(payload, str) and len(payload) < 20_000:
                await self._audio(base64.b64decode(payload, validate=False))
        elif event == "mark":
            name = (data.get("mark") or {}).get("name")
            if isinstance(name, str):
                self._marked(name)
        elif event == "dtmf" and self.msg is not None:
            digit = (data.get("dtmf") or {}).get("digit")
            if isinstance(digit, str) and len(digit) == 1:
                self._digit(digit)
        elif event == "stop":
            return True
        return False

    async def _start(self, start: dict[str, Any]) -> None:
        self.stream_sid = str(start.get("streamSid") or "")[:64]
        self.call_sid = str(start.get("callSid") or "")[:64]
        params = start.get("customParameters") or {}
        caller = str(params.get("from") or "")[:32] if isinstance(params, dict) else ""
        self.msg = self.channel.call_message(self.call_sid, caller, "", 0, mode="stream")
        logger.info(
            "media stream of call %s from %s", self.call_sid, mask_phone(caller) or "withheld"
        )
        self._spawn(self._turn("/greet"))

    async def _audio(self, ulaw: bytes) -> None:
        events = await asyncio.to_thread(self.listener.feed, ulaw)
        for event in events:
            if isinstance(event, Utterance):
                self._spawn(self._utterance(event))
            elif self.outstanding:  # the caller speaks over the bot
                await self._barge_in()

    def _marked(self, name: str) -> None:
        if name in self.outstanding:
            self.outstanding.remove(name)
            self.heard.append(self.said.pop(name, ""))
        if not self.outstanding:
            self.played.set()

    def _digit(self, digit: str) -> None:
        if self.offered and not self.digits and digit not in "#*":
            self._spawn(self._turn(digit))
        elif digit == "#":
            typed, self.digits = self.digits, ""
            if typed:
                self._spawn(self._turn(typed))
        elif len(self.digits) < MAX_DIGITS:
            self.digits += digit

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("call %s: a turn failed", self.call_sid, exc_info=task.exception())

    # ---------------------------------------------------------------- turns

    async def _utterance(self, utterance: Utterance) -> None:
        languages = list(self.channel.settings.languages)
        if self.language in languages:
            languages.sort(key=lambda code: code != self.language)
        try:
            heard = await self.speech.transcribe(utterance, languages)
        except HablaError as e:  # as for a voice note: "could you say it again?"
            logger.warning("call %s: speech-to-text failed: %s", self.call_sid, e)
            await self._turn("/voice_unclear")
            return
        if not heard.text:
            return  # noise: nothing to answer
        voice = {
            "transcript": heard.text,
            "language": heard.language,
            "confidence": round(heard.confidence, 3),
            "duration_s": round(utterance.duration_s, 2),
        }
        await self._turn(heard.text, voice)

    async def _turn(self, text: str, voice: dict[str, Any] | None = None) -> None:
        assert self.msg is not None
        async with self.turn_lock:
            self.turns += 1
            call_meta = {**self.msg.metadata["call"]}
            if self.cut:
                call_meta["barge_in"] = {"cut": self.cut, "heard": self.heard}
                self.cut = []
            metadata: dict[str, Any] = {**self.msg.metadata, "call": call_meta}
            if voice is not None:
                metadata["voice"] = voice
            msg = replace(
                self.msg,
                text=text,
                message_id=f"{self.call_sid}:{self.turns}",
                metadata=metadata,
            )
            ctx = await self.services.converse(msg, self.channel.collector(self.call_sid))
            self.language = ctx.language or self.language
            await self.services.calls.turn(self.call_sid, self.language)
            self.offered = any(r.buttons for r in ctx.replies)
            if self.speaking is not None and not self.speaking.done():
                await self._barge_in()  # a newer answer replaces what is still being said
            self.speaking = asyncio.ensure_future(self._say(ctx.replies, self.language))

    async def _say(self, replies: Sequence[BotReply], language: str) -> None:
        text = " ".join(s for s in (spoken(r, language) for r in replies) if s)
        turn = self.turns
        self.heard = []
        self.played.clear()
        for index, sentence in enumerate(sentences(text)):
            try:
                frames = await self.speech.speak(sentence, language)
            except HablaError as e:
                logger.error("call %s: text-to-speech failed: %s", self.call_sid, e)
                break
            name = f"{turn}.{index}"
            self.said[name] = sentence
            self.outstanding.append(name)
            for frame in frames:
                await self._send({"event": "media", "media": {"payload": _b64(frame)}})
            await self._send({"event": "mark", "mark": {"name": name}})
        action = call_action(replies)
        if action in ("hangup", "transfer"):
            if self.outstanding:
                await self.played.wait()
            await self.channel.end_stream(self.call_sid, action)
            await self.ws.close()

    async def _barge_in(self) -> None:
        """Stop the bot's audio: what was heard is kept, the rest is recorded as cut."""
        if self.speaking is not None and not self.speaking.done():
            self.speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.speaking
        cut = [self.said.pop(name, "") for name in self.outstanding]
        self.outstanding.clear()
        self.played.set()
        await self._send({"event": "clear"})
        self.cut = [c for c in cut if c]
        logger.info(
            "call %s: the caller spoke over the bot; %d sentence(s) heard, %d cut",
            self.call_sid,
            len(self.heard),
            len(self.cut),
        )

    async def _send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        await self.ws.send_json({**message, "streamSid": self.stream_sid})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
