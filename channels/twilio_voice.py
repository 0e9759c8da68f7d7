"""Phone calls through Twilio Programmable Voice, in ``gather`` mode: Twilio hears and
speaks, habla understands and answers, in the caller's language.

``POST /webhooks/twilio_voice/webhook``: the incoming call, then every ``<Gather>``
result (``?step=input``), a silence (``?step=silence``) and the end of a slow turn
(``?step=wait``). ``POST /webhooks/twilio_voice/status``: call status callbacks.
Every request is verified with ``X-Twilio-Signature`` against the public URL, as the
messaging webhook is (403 when wrong, missing, or when the auth token is unset).

* **One conversation per person.** The caller's E.164 number is the conversation, so a
  caller who was ordering on WhatsApp continues that order, in the language the
  conversation has; the greeting is the first turn (``/greet``). A withheld or
  non-E.164 caller gets a conversation of its own (``call:<CallSid>``).
* **Language.** ``<Gather language>`` and ``<Say language voice>`` follow the turn's
  language, so a caller who switches to Spanish is heard in Spanish from the next
  prompt on (voices per language: ``HABLA_CALL_VOICES``).
* **Keypad and buttons.** Buttons are read as "for Shipping, press 2"; a digit, the
  number said, or the button's title picks that button (the turn's ``ResolveChoice``).
* **Silence.** No input reprompts once (``utter_call_silence``), then the bot says
  goodbye (``utter_call_goodbye``) and hangs up.
* **Twilio's 15-second limit.** A turn slower than ``HABLA_CALL_HOLD_AFTER_S`` answers
  with a short hold message (``utter_call_hold``) and a redirect that picks the turn's
  result up when it is ready.
* **Ending and transfer.** A reply with ``custom: {call: hangup}`` ends the call after
  it is said; ``custom: {call: transfer}`` dials ``HABLA_CALL_TRANSFER_NUMBER`` (with no
  number, the words alone are said and the call goes on).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from twilio.twiml.voice_response import Gather, VoiceResponse

from channels.base import ChannelServices, public_request_url
from channels.call_text import CallOutput, call_action, spoken
from channels.twilio import TwilioChannel
from channels.twilio_media import MediaStreamSession
from runtime.calls import FINAL
from runtime.locales import to_locale
from runtime.messages import InboundMessage, mask_phone
from runtime.output import OutputChannel
from runtime.settings import language_map
from runtime.turn import TurnContext

logger = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_SPEECH_CHARS = 2000  # what Twilio's recognizer returns for one utterance is far less
MAX_WAITS = 4  # hold messages for one slow turn before giving up on it

FALLBACK_TEXTS = {
    "utter_call_silence": "Are you still there? You can speak, or use the keypad.",
    "utter_call_goodbye": "I could not hear you. Goodbye!",
    "utter_call_hold": "One moment, please.",
}


@dataclass(frozen=True)
class CallStep:
    """Where a request is in a call, from the query string of its URL."""

    step: str  # "start", "input", "silence", "wait", "after_stream"
    turn: int  # how many turns this call has had (message ids, and the next action URL)
    silences: int = 0  # reprompts so far; for "wait": hold messages so far

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> CallStep:
        step = query.get("step", "start")
        if step not in ("start", "input", "silence", "wait", "after_stream"):
            raise web.HTTPBadRequest(text=f"unknown step {step[:20]!r}")
        try:
            turn = int(query.get("n", "0"))
            silences = int(query.get("s", "0"))
        except ValueError as e:
            raise web.HTTPBadRequest(text="n and s must be integers") from e
        if not (0 <= turn < 100_000 and 0 <= silences < 10):
            raise web.HTTPBadRequest(text="n or s out of range")
        return cls(step, turn, silences)


class TwilioVoiceChannel(TwilioChannel):
    """Calls to a Twilio number, in gather or stream mode (``HABLA_CALL_MODE``). Shares
    the Twilio account's secrets and signature checking with the messaging channel."""

    name = "twilio_voice"
    paths = ("webhook", "status")

    def __init__(self, services: ChannelServices) -> None:
        super().__init__(services)
        self.voices = language_map(self.settings.call.voices, "call.voices (HABLA_CALL_VOICES)")
        self.output = None  # calls are answered in the webhook's response
        self.sender = None  # type: ignore[assignment]
        self._turns: dict[str, asyncio.Task[TurnContext]] = {}
        self._after_stream: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in self._turns.values():
            task.cancel()
        await asyncio.gather(*self._turns.values(), return_exceptions=True)
        self._turns.clear()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/twilio_voice/webhook", self.receive),
            web.post("/webhooks/twilio_voice/status", self.status),
            web.get("/webhooks/twilio_voice/stream", self.stream),
        ]

    # ---------------------------------------------------------------- requests

    async def receive(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        call_sid, caller = form.get("CallSid", ""), form.get("From", "")
        if not call_sid or len(call_sid) > 64:
            raise web.HTTPBadRequest(text="missing field: CallSid")
        step = CallStep.from_query(request.query)
        msg = self._message(call_sid, caller, form.get("To", ""), step)
        if step.step == "start":
            logger.info("call %s from %s", call_sid, mask_phone(caller) or "a withheld number")
            mode = self.settings.call.mode
            await self.services.calls.started(
                call_sid, msg.conversation_id, self.name, mode, msg.sender
            )
            if mode == "stream":
                return self._twiml(self._connect_stream(caller))
            return await self._turn(msg, step, "/greet")
        if step.step == "after_stream":
            return self._twiml(self._after(call_sid))
        if step.step == "wait":
            return await self._wait(msg, step)
        text = (form.get("Digits") or form.get("SpeechResult") or "").strip()
        text = text[:MAX_SPEECH_CHARS]
        if step.step == "silence" or not text:
            return await self._silence(msg, step)
        meta = {"speech_confidence": form.get("Confidence", "")} if form.get("SpeechResult") else {}
        return await self._turn(msg, step, text, meta)

    async def status(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        call_sid, status = form.get("CallSid", ""), form.get("CallStatus", "")
        if not call_sid or not status:
            raise web.HTTPBadRequest(text="missing field(s): CallSid, CallStatus")
        duration = form.get("CallDuration", "")
        logger.info("call %s %s after %s s", call_sid, status, duration or "?")
        seconds = float(duration) if duration.isdigit() and len(duration) < 9 else None
        await self.services.calls.status(call_sid, status, seconds)
        if status in FINAL:
            self._after_stream.pop(call_sid, None)
            task = self._turns.pop(call_sid, None)
            if task is not None and not task.done():
                # the caller hung up while a turn ran: let it finish (its state is kept)
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        return web.Response(status=204)

    # ---------------------------------------------------------------- turns

    def _message(self, call_sid: str, caller: str, called: str, step: CallStep) -> InboundMessage:
        return self.call_message(call_sid, caller, called, step.turn, self.settings.call.mode)

    def call_message(
        self, call_sid: str, caller: str, called: str, turn: int, mode: str
    ) -> InboundMessage:
        """The turn's message for a call: the caller's E.164 number is the conversation
        (a withheld or odd number gets ``call:<CallSid>``)."""
        person = caller if E164.match(caller) else ""
        conversation = (
            self.services.conversation_id(self.name, person) if person else f"call:{call_sid}"
        )
        metadata: dict[str, Any] = {"call": {"sid": call_sid, "mode": mode}}
        messaging = self.messaging(person)
        if messaging:
            metadata["messaging"] = messaging
        return InboundMessage(
            channel=self.name,
            conversation_id=conversation,
            message_id=f"{call_sid}:{turn}",
            sender=person,
            reply_to=caller,
            reply_from=called,
            metadata=metadata,
        )

    def messaging(self, person: str) -> dict[str, str]:
        """Where this caller's written messages go (a payment link cannot be said): the
        channel and addresses of their WhatsApp, or nothing (``HABLA_CALL_MESSAGING``)."""
        s = self.settings
        opened = {n.strip() for n in s.server.channels.split(",")}
        cloud = bool(s.whatsapp.phone_number_id and s.whatsapp.access_token)
        sender = s.call.whatsapp_from.removeprefix("whatsapp:")
        via_twilio = bool(sender and s.twilio.account_sid and s.twilio.auth_token)
        choice = s.call.messaging
        if choice == "auto":
            choice = "whatsapp" if cloud else "twilio" if via_twilio else "off"
        if not person or choice not in opened:
            return {}
        if choice == "whatsapp" and cloud:
            return {"channel": "whatsapp", "reply_to": person.lstrip("+"), "reply_from": ""}
        if choice == "twilio" and via_twilio:
            return {
                "channel": "twilio",
                "reply_to": f"whatsapp:{person}",
                "reply_from": f"whatsapp:{sender}",
            }
        return {}

    def collector(self, call_sid: str) -> OutputChannel:
        return CallOutput(call_sid)

    async def end_stream(self, call_sid: str, action: str) -> None:
        """A streamed call the bot ends: Twilio's redirect after the stream does it."""
        self._after_stream[call_sid] = action
        await self._record_ending(call_sid, action, streamed=True)

    async def _record_ending(self, call_sid: str, action: str, *, streamed: bool = False) -> None:
        """The bot hangs up, or hands over to the transfer number. With no number set a
        handover is only words (gather mode goes on; a closed stream hangs up)."""
        number = self.settings.call.transfer_number
        if action == "transfer" and number:
            await self.services.calls.ending(call_sid, "transfer", number)
        elif action == "hangup" or (action == "transfer" and streamed):
            await self.services.calls.ending(call_sid, "bot")

    async def _turn(
        self, msg: InboundMessage, step: CallStep, text: str, meta: Mapping[str, Any] = {}
    ) -> web.Response:
        call_sid = msg.metadata["call"]["sid"]
        metadata = {**msg.metadata, "call": {**msg.metadata["call"], **meta}}
        inbound = replace(msg, text=text, metadata=metadata)
        running = self._turns.get(call_sid)
        if running is not None and running.get_name() == msg.message_id:
            return await self._answer(msg, step, running, waits=0)  # Twilio retried the POST
        task: asyncio.Task[TurnContext] = asyncio.ensure_future(
            self.services.converse(inbound, CallOutput(call_sid))
        )
        task.set_name(msg.message_id)
        self._turns[call_sid] = task
        return await self._answer(msg, step, task, waits=0)

    async def _wait(self, msg: InboundMessage, step: CallStep) -> web.Response:
        task = self._turns.get(msg.metadata["call"]["sid"])
        if task is None:  # another server took the call's turn, or we restarted
            return self._respond_silence(msg, step, "", reprompt=True)
        return await self._answer(msg, step, task, waits=step.silences)

    async def _answer(
        self, msg: InboundMessage, step: CallStep, task: asyncio.Task[TurnContext], waits: int
    ) -> web.Response:
        call_sid = msg.metadata["call"]["sid"]
        done, _ = await asyncio.wait({task}, timeout=self.settings.call.hold_after_s)
        if not done:
            if waits >= MAX_WAITS:
                task.cancel()
                self._turns.pop(call_sid, None)
                return self._twiml(self._goodbye("utter_error", ""))
            language = await self._language(msg)
            hold = VoiceResponse()
            self._say(hold, self.text("utter_call_hold", language), language)
            hold.redirect(self._url("wait", step.turn, waits + 1), method="POST")
            return self._twiml(hold)
        self._turns.pop(call_sid, None)
        ctx = task.result()
        await self.services.calls.turn(call_sid, ctx.language)
        await self._record_ending(call_sid, call_action(ctx.replies))
        return self._twiml(self.render(ctx, step.turn + 1))

    async def _silence(self, msg: InboundMessage, step: CallStep) -> web.Response:
        call_sid = msg.metadata["call"]["sid"]
        await self.services.calls.silence(call_sid)
        reprompt = step.silences < 1
        if not reprompt:
            await self.services.calls.ending(call_sid, "silence")
        language = await self._language(msg)
        return self._respond_silence(msg, step, language, reprompt=reprompt)

    def _respond_silence(
        self, msg: InboundMessage, step: CallStep, language: str, *, reprompt: bool
    ) -> web.Response:
        if not reprompt:
            return self._twiml(self._goodbye("utter_call_goodbye", language))
        response = VoiceResponse()
        silences = step.silences + 1
        gather = self._gather(response, language, step.turn, (), silences)
        self._say(gather, self.text("utter_call_silence", language), language)
        response.redirect(self._url("silence", step.turn, silences), method="POST")
        return self._twiml(response)

    def _goodbye(self, name: str, language: str) -> VoiceResponse:
        response = VoiceResponse()
        self._say(response, self.text(name, language), language)
        response.hangup()
        return response

    async def _language(self, msg: InboundMessage) -> str:
        try:
            return await self.services.language(msg.conversation_id) or ""
        except Exception:
            logger.warning("the conversation's language could not be read", exc_info=True)
            return ""

    # ---------------------------------------------------------------- stream mode

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The media stream's WebSocket: verified before the upgrade (403 otherwise)."""
        signature = request.headers.get("X-Twilio-Signature", "")
        url = public_request_url(request, self.settings.public_base)
        url = re.sub(r"^http", "ws", url)  # Twilio signs the wss:// URL it opened
        if not signature or not self.validator.validate(url, {}, signature):
            logger.warning(
                "twilio_voice: refused a media stream with a %s signature",
                "wrong" if signature else "missing",
            )
            raise web.HTTPForbidden(text="invalid signature")
        speech = self.services.call_speech()
        if speech is None:
            raise web.HTTPServiceUnavailable(text="speech-to-text or text-to-speech is off")
        ws = web.WebSocketResponse(max_msg_size=64 * 1024)
        await ws.prepare(request)
        await MediaStreamSession(self, ws, speech).run()
        return ws

    def _connect_stream(self, caller: str) -> VoiceResponse:
        base = self.settings.public_base
        response = VoiceResponse()
        connect = response.connect()
        stream = connect.stream(url=re.sub(r"^http", "ws", base) + "/webhooks/twilio_voice/stream")
        stream.parameter(name="from", value=caller[:32])
        response.redirect(self._url("after_stream", 0, 0), method="POST")
        return response

    def _after(self, call_sid: str) -> VoiceResponse:
        """The stream ended: the bot's goodbye hangs up, a handover dials the number."""
        action = self._after_stream.pop(call_sid, "")
        response = VoiceResponse()
        number = self.settings.call.transfer_number
        if action == "transfer" and number:
            response.dial(number)
        else:
            response.hangup()
        return response

    # ---------------------------------------------------------------- TwiML

    def render(self, ctx: TurnContext, next_turn: int) -> VoiceResponse:
        """The turn's replies as TwiML: said inside the next ``<Gather>`` (so the
        caller can answer over them), or said before a hang-up or a transfer."""
        language = ctx.language or self.settings.languages[0]
        said = [
            spoken(r, language, self.text("utter_call_press", language, "")) for r in ctx.replies
        ]
        text = " ".join(s for s in said if s)
        action = call_action(ctx.replies)
        response = VoiceResponse()
        if action == "hangup":
            self._say(response, text, language)
            response.hangup()
            return response
        number = self.settings.call.transfer_number
        if action == "transfer" and number:
            self._say(response, text, language)
            response.dial(number)
            return response
        buttons = [b for r in ctx.replies for b in r.buttons]
        gather = self._gather(response, language, next_turn, [b.title for b in buttons])
        if text:
            self._say(gather, text, language)
        response.redirect(self._url("silence", next_turn, 0), method="POST")
        return response

    def _gather(
        self,
        parent: VoiceResponse,
        language: str,
        turn: int,
        hints: Sequence[str],
        silences: int = 0,
    ) -> Gather:
        """Speech or keypad input; with nothing heard, Twilio goes on to the redirect
        that follows (``?step=silence``). ``silences``: reprompts so far."""
        c = self.settings.call
        options: dict[str, Any] = {
            "input": "speech dtmf",
            "action": self._url("input", turn, silences),
            "method": "POST",
            "language": to_locale(language or self.settings.languages[0]),
            "speech_timeout": c.speech_timeout,
            "timeout": c.input_timeout_s,
        }
        if c.speech_model:
            options["speech_model"] = c.speech_model
        words = [*hints, *(h.strip() for h in c.hints.split(",") if h.strip())]
        if words:
            options["hints"] = ", ".join(dict.fromkeys(words))[:1000]
        return parent.gather(**options)

    def _say(self, parent: Any, text: str, language: str) -> None:
        if not text:
            return
        language = language or self.settings.languages[0]
        voice = self.voices.get(language)
        parent.say(text, language=to_locale(language), **({"voice": voice} if voice else {}))

    def _url(self, step: str, turn: int, count: int) -> str:
        base = self.settings.public_base
        return f"{base}/webhooks/twilio_voice/webhook?step={step}&n={turn}&s={count}"

    @staticmethod
    def _twiml(response: VoiceResponse) -> web.Response:
        return web.Response(text=str(response), content_type="text/xml")

    def text(self, name: str, language: str, default: str | None = None) -> str:
        """A response of the domain in ``language`` (its unconditioned text, else ours)."""
        texts = self.services.responses(name)
        fallback = FALLBACK_TEXTS.get(name, "") if default is None else default
        return texts.get(language) or texts.get("") or fallback
