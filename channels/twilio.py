"""WhatsApp and SMS through Twilio Programmable Messaging.

``POST /webhooks/twilio/webhook``: an incoming message. The ``X-Twilio-Signature`` is
checked against the public URL; the message is recorded, acknowledged with empty TwiML
and its turn runs in the background. ``POST /webhooks/twilio/status``: delivery
status callbacks for the messages we sent.

Both paths answer, in this order (never 500, nothing processed unless signed):

- 400 when the body is not an ``application/x-www-form-urlencoded`` form that decodes
  in its charset (Twilio sends nothing else): invalid UTF-8, multipart, JSON... There
  are no params for a signature to cover, so it is not checked; nothing is read.
- 413 when the form is over the bounds: more than 200 fields, or a name or value over
  16 KiB characters (a message body is at most 1,600; the server refuses bodies over
  1 MiB before any of this).
- 403 when the signature is missing or does not cover this URL and these params.
- 400 when a signed form is not a message (or status) Twilio would send: a field
  missing, ``NumMedia`` not a count, coordinates not on Earth. ``NumMedia`` over 10
  (Twilio's maximum) reads the first 10 media.

Replies go out through the official SDK's ``AsyncTwilioHttpClient``. Twilio's Messages
API takes no idempotency key: when a send times out or its connection drops after the
request went out, the message may exist, so before trying again habla reads the
conversation's newest messages (``GET .../Messages.json?To=&From=``) and takes a
message with the same body and media, created since the first such try, as sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.base import (
    ChannelServices,
    InputChannel,
    MediaError,
    OutputChannel,
    download,
    public_request_url,
)
from runtime.errors import error_for_status
from runtime.messages import BotReply, Delivery, InboundMessage, Location, MediaRef, mask_phone
from runtime.retry import PermanentError, TransientError, with_retries
from runtime.settings import Settings
from runtime.wire import WireError, WireTooLarge, parse_form

logger = logging.getLogger(__name__)

BODY_LIMIT = 1600  # characters per Twilio message body
RECENT_MESSAGES = 20
"""Messages read (newest first) to find one whose send timed out."""
CLOCK_SLACK_S = 2.0
"""Twilio's timestamps are whole seconds, and its clock is not ours."""


class OutcomeUnknown(TransientError):
    """The request may have reached Twilio (it timed out, or the connection dropped
    after it was sent): the message may exist. Twilio's Messages API takes no
    idempotency key, so before sending again habla looks for it."""


@dataclass
class _Attempt:
    unsure_since: float = 0.0  # when the first try whose outcome is unknown began


MAX_MEDIA = 10  # media per incoming message, Twilio's maximum
FORM_TYPES = ("", "application/x-www-form-urlencoded")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class BadRequest(ValueError):
    pass


def split_text(text: str, limit: int = BODY_LIMIT) -> list[str]:
    """Split on word boundaries (newlines first) into parts of at most ``limit``."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = window.rfind("\n")
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit  # one word longer than the limit: cut it
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _address(value: str) -> str:
    """``whatsapp:+14155550100`` or ``+14155550100`` → ``+14155550100``."""
    return value.split(":", 1)[1] if ":" in value else value


def _num_media(value: str) -> int:
    """How many ``MediaUrl{i}`` to read: a count in ASCII digits, at most MAX_MEDIA."""
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"NumMedia is not a count: {value[:20]!r}")
    return MAX_MEDIA if len(value) > 3 else min(int(value), MAX_MEDIA)


def _coordinate(value: str, limit: float) -> float:
    try:
        number = float(value) if len(value) <= 40 else math.nan
    except ValueError:
        number = math.nan
    if not -limit <= number <= limit:  # NaN fails too
        raise BadRequest(f"Latitude/Longitude are not coordinates: {value[:20]!r}")
    return number


def parse_message(form: Mapping[str, str]) -> InboundMessage:
    """Twilio's incoming-message form → the typed inbound message."""
    missing = [k for k in ("From", "To") if not form.get(k)]
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
    if not sid:
        missing.append("MessageSid")
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    media = tuple(
        MediaRef(url=form[f"MediaUrl{i}"], content_type=form.get(f"MediaContentType{i}", ""))
        for i in range(_num_media(form.get("NumMedia") or "0"))
        if form.get(f"MediaUrl{i}")
    )
    location = None
    if form.get("Latitude") and form.get("Longitude"):
        location = Location(
            latitude=_coordinate(form["Latitude"], 90),
            longitude=_coordinate(form["Longitude"], 180),
            address=form.get("Address", ""),
            label=form.get("Label", ""),
        )
    sender = _address(form["From"])
    if form.get("WaId") and not sender.startswith("+"):
        sender = "+" + form["WaId"]
    kind = "whatsapp" if form["From"].startswith("whatsapp:") else "sms"
    return InboundMessage(
        channel="twilio",
        conversation_id=sender,
        message_id=sid or "",
        text=form.get("ButtonText") or form.get("Body", ""),
        sender=sender,
        reply_to=form["From"],
        reply_from=form["To"],
        profile_name=form.get("ProfileName", ""),
        media=media,
        location=location,
        button_payload=form.get("ButtonPayload", ""),
        metadata={"twilio": {"kind": kind, "account_sid": form.get("AccountSid", "")}},
    )


class TwilioOutput(OutputChannel):
    """Sends through Twilio's Messages API with the SDK's async HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http: AsyncTwilioHttpClient | None = None
        self.client: Client | None = None
        self.session: aiohttp.ClientSession | None = None
        base = settings.public_base
        self.status_callback = (
            f"{base}/webhooks/twilio/status" if base and settings.twilio.status_callback else None
        )

    async def start(self) -> None:
        # the SDK's session must be created inside the running loop
        self.http = AsyncTwilioHttpClient(timeout=self.settings.send.timeout_s)
        self.client = Client(
            self.settings.twilio.account_sid,
            self.settings.twilio.auth_token,
            http_client=self.http,
        )
        self.client.api.base_url = self.settings.twilio.api_base.rstrip("/")
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.session is not None:
            await self.session.close()

    def _media_auth(self, url: str) -> aiohttp.BasicAuth | None:
        """Account credentials, but only for Twilio's own hosts (never leak them)."""
        host = urlparse(url).hostname or ""
        api_host = urlparse(self.settings.twilio.api_base).hostname or ""
        if host == api_host or host == "twilio.com" or host.endswith(".twilio.com"):
            t = self.settings.twilio
            return aiohttp.BasicAuth(t.account_sid, t.auth_token)
        return None

    async def fetch_media(self, media: MediaRef, max_bytes: int) -> tuple[bytes, str]:
        """MediaUrl with HTTP basic auth (Twilio redirects to its storage)."""
        if self.session is None:
            raise MediaError("TwilioOutput.start() was not awaited")
        if not media.url:
            raise MediaError("no media URL")
        data, content_type = await download(
            self.session,
            media.url,
            max_bytes=max_bytes,
            timeout_s=self.settings.send.timeout_s,
            auth=self._media_auth(media.url),
        )
        return data, media.content_type or content_type

    async def _create(self, **params: Any) -> str:
        assert self.client is not None, "TwilioOutput.start() was not awaited"
        try:
            # the SDK's async client does not apply its own timeout: enforce it here
            message = await asyncio.wait_for(
                self.client.messages.create_async(**params), self.settings.send.timeout_s
            )
        except TwilioRestException as e:
            raise error_for_status(e.status, f"twilio {e.status} error {e.code}: {e.msg}") from e
        except aiohttp.ClientConnectorError as e:  # never reached Twilio
            raise TransientError(f"{type(e).__name__}: {e}") from e
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OutcomeUnknown(f"{type(e).__name__}: {e}") from e
        return str(message.sid)

    async def _create_once(self, attempt: _Attempt, **params: Any) -> str:
        """One try at sending a message: after a try whose outcome is unknown, Twilio's
        message list is read first, and a message found there is not sent again."""
        if attempt.unsure_since:
            sid = await self._find_sent(params, attempt.unsure_since)
            if sid:
                logger.info("twilio: %s had gone out before its answer was lost", sid)
                return sid
        started = time.time()
        try:
            return await self._create(**params)
        except OutcomeUnknown:
            attempt.unsure_since = attempt.unsure_since or started
            raise

    async def _find_sent(self, params: Mapping[str, Any], since: float) -> str:
        """The sid of an outbound message with these parameters created at or after
        ``since`` (unix time, this clock; Twilio's has 1 s resolution), or ''. Raises
        :class:`TransientError` if Twilio cannot be asked (then nothing is resent)."""
        assert self.client is not None, "TwilioOutput.start() was not awaited"
        body = "" if params["body"] is values.unset else str(params["body"])
        media = 0 if params["media_url"] is values.unset else len(params["media_url"])
        try:
            found = await asyncio.wait_for(
                self.client.messages.list_async(
                    to=params["to"], from_=params["from_"], limit=RECENT_MESSAGES
                ),
                self.settings.send.timeout_s,
            )
        except TwilioRestException as e:
            raise error_for_status(e.status, f"twilio {e.status} error {e.code}: {e.msg}") from e
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OutcomeUnknown(f"checking for a sent message: {type(e).__name__}: {e}") from e
        for message in found:
            created = message.date_created
            if (
                created is not None
                and created.timestamp() >= since - CLOCK_SLACK_S
                and (message.body or "") == body
                and int(message.num_media or 0) == media
                and str(message.direction or "").startswith("outbound")
            ):
                return str(message.sid)
        return ""

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        parts = split_text(self.numbered_text(reply)) or [""]
        media = [u for u in (reply.image, reply.attachment, reply.audio) if u]
        out = []
        for index, part in enumerate(parts):
            params: dict[str, Any] = {
                "to": msg.reply_to,
                "from_": msg.reply_from,
                "body": part or values.unset,
                "media_url": media if media and index == len(parts) - 1 else values.unset,
                "status_callback": self.status_callback or values.unset,
            }
            if params["body"] is values.unset and params["media_url"] is values.unset:
                continue
            try:
                sid, attempts = await with_retries(
                    functools.partial(self._create_once, _Attempt(), **params),
                    attempts=self.settings.send.max_attempts,
                    backoff_s=self.settings.send.backoff_s,
                    family="channel",
                    provider="twilio",
                )
                out.append(Delivery(ok=True, provider_id=sid, attempts=attempts))
            except TransientError as e:
                out.append(
                    Delivery(
                        ok=False,
                        error=str(e),
                        attempts=self.settings.send.max_attempts,
                        transient=True,
                    )
                )
            except PermanentError as e:
                out.append(Delivery(ok=False, error=str(e), attempts=1))
        return out


class TwilioChannel(InputChannel):
    name = "twilio"
    paths = ("webhook", "status")

    def __init__(self, services: ChannelServices) -> None:
        super().__init__(services)
        self.validator = RequestValidator(self.settings.twilio.auth_token)
        self.sender = TwilioOutput(self.settings)
        self.output = self.sender

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        t = settings.twilio
        return [
            n
            for n, v in (("TWILIO_ACCOUNT_SID", t.account_sid), ("TWILIO_AUTH_TOKEN", t.auth_token))
            if not v
        ]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/twilio/webhook", self.receive),
            web.post("/webhooks/twilio/status", self.status),
        ]

    async def _verified_form(self, request: web.Request) -> MultiDictProxy[str]:
        """The form, once it is read within bounds and its signature verified.

        See the module's docstring for the status codes, in their order.
        """
        if request.content_type not in FORM_TYPES:
            raise web.HTTPBadRequest(text="expected an application/x-www-form-urlencoded body")
        try:
            pairs = parse_form(await request.read(), charset=request.charset or "utf-8")
        except WireTooLarge as e:
            raise web.HTTPRequestEntityTooLarge(
                max_size=request.client_max_size,
                actual_size=request.content_length or 0,
                text=str(e),
            ) from e
        except WireError as e:
            raise web.HTTPBadRequest(text=str(e)) from e
        form = MultiDictProxy(MultiDict(pairs))
        signature = request.headers.get("X-Twilio-Signature", "")
        url = public_request_url(request, self.settings.public_base)
        if not signature or not self.validator.validate(url, form, signature):
            logger.warning(
                "twilio: rejected a request with a %s signature for %s",
                "wrong" if signature else "missing",
                request.path,
            )
            raise web.HTTPForbidden(text="invalid signature")
        return form

    async def receive(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        try:
            msg = parse_message(form)
        except BadRequest as e:
            raise web.HTTPBadRequest(text=str(e)) from e
        msg = replace(msg, conversation_id=self.services.conversation_id(self.name, msg.sender))
        if not await self.services.accept(msg, self.sender):
            logger.info(
                "twilio: duplicate %s from %s ignored", msg.message_id, mask_phone(msg.sender)
            )
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        sid, status = form.get("MessageSid"), form.get("MessageStatus")
        if not sid or not status:
            raise web.HTTPBadRequest(text="missing field(s): MessageSid, MessageStatus")
        code = form.get("ErrorCode", "")
        error = form.get("ErrorMessage", "")
        known = await self.services.delivery_status(sid, status, code, error)
        if status in ("failed", "undelivered"):
            logger.warning(
                "twilio: message %s %s (error %s) to %s",
                sid,
                status,
                code or "-",
                mask_phone(form.get("To", "")),
            )
        elif not known:
            logger.debug("twilio: status %s for unknown message %s", status, sid)
        return web.Response(status=204)
