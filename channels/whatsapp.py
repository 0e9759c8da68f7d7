"""WhatsApp Cloud API (Meta) webhooks.

``GET /webhooks/whatsapp/webhook``: the verification handshake. ``POST``: events,
verified with ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app
secret), failing closed. One POST may carry several messages and statuses; each
message becomes a typed :class:`InboundMessage` (or is ignored with a debug log), each
status is stored with the message it belongs to. The webhook answers 200 at once; turns
run in the background, in order per conversation, once per ``wamid``.

Status codes of the POST, in order (never 500): 403 when the signature is missing or
wrong (checked first, over the raw bytes; nothing is decoded before); 400 when the
signed body is not JSON within :mod:`runtime.wire`'s bounds (invalid UTF-8, nested
over 64 deep, a number over 100 characters, NaN/Infinity); otherwise 200. Valid JSON
that is not a WhatsApp event (an array, another ``object``) gets 200 and is ignored,
as are its parts of the wrong type (``"messages": {}``, a ``text`` that is a string, a
numeric ``from``...): each is skipped with a debug log and the rest is processed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from channels.base import ChannelServices, InputChannel
from channels.graph import WhatsAppOutput
from runtime.messages import InboundMessage, Location, MediaRef, mask_phone
from runtime.settings import Settings
from runtime.wire import WireError, loads_bounded

logger = logging.getLogger(__name__)

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


@dataclass(frozen=True)
class StatusUpdate:
    message_id: str
    status: str
    recipient: str
    error_code: str = ""
    error: str = ""


def valid_signature(app_secret: str, body: bytes, header: str) -> bool:
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``."""
    if not app_secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256=") :].strip().lower())


MAX_ID_CHARS = 256
"""Ids, phone numbers, types and codes (a wamid is about 60 characters)."""
MAX_TEXT_CHARS = 65536
"""Text, captions, titles, names: WhatsApp's own limit on a message."""


def _dict(value: Any) -> dict[str, Any]:
    """An object part of the payload; ``{}`` when it is missing or of another type."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """An array part of the payload; ``[]`` when it is missing or of another type."""
    return value if isinstance(value, list) else []


def _str(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """A string part of the payload; ``""`` when missing, of another type or too long."""
    return value if isinstance(value, str) and len(value) <= limit else ""


def _id(value: Any) -> str:
    return _str(value, MAX_ID_CHARS)


def _code(value: Any) -> str:
    """An error code: Meta sends integers (or strings); anything else is no code."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        return str(value)
    return _id(value)


def _coordinate(value: Any, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value) if not isinstance(value, str) or len(value) <= 40 else math.nan
    except (ValueError, OverflowError):
        return None
    return number if -limit <= number <= limit else None  # NaN is out of range too


def _what(raw: Any) -> str:
    """A short description of a message for the debug log (never its whole content)."""
    if not isinstance(raw, dict):
        return f"message that is a {type(raw).__name__}"
    kind = raw.get("type")
    if isinstance(kind, str) and len(kind) <= 40:
        return f"message type {kind!r}"
    return f"message of type {type(kind).__name__}"


def _message(raw: dict[str, Any], names: dict[str, str]) -> InboundMessage | None:
    """One entry of ``value.messages``, or None for what a turn should not see.

    A message whose required parts (``from``, ``id``, ``type``, the body of its type)
    are missing or of the wrong type is None too; optional parts of the wrong type
    (a caption, a reply context, a referral) are left out.
    """
    kind = _id(raw.get("type"))
    wa_id = _id(raw.get("from")) or _id(raw.get("from_user_id"))
    mid = _id(raw.get("id"))
    if not wa_id or not mid or not kind:
        return None
    sender = "+" + wa_id if wa_id.isascii() and wa_id.isdigit() else wa_id
    text, payload, location = "", "", None
    media: tuple[MediaRef, ...] = ()
    meta: dict[str, Any] = {"whatsapp": {"type": kind, "wa_id": wa_id}}
    context = _dict(raw.get("context"))
    if _id(context.get("id")):
        meta["whatsapp"]["reply_to_message_id"] = context["id"]
    if context.get("forwarded") is True or context.get("frequently_forwarded") is True:
        meta["whatsapp"]["forwarded"] = True
    if _dict(raw.get("referral")):
        meta["whatsapp"]["referral"] = raw["referral"]
    if kind == "text":
        body = _dict(raw.get("text")).get("body")
        if not isinstance(body, str) or len(body) > MAX_TEXT_CHARS:
            return None
        text = body
    elif kind in MEDIA_TYPES:
        if not isinstance(raw.get(kind), dict):
            return None
        body = raw[kind]
        voice = kind == "audio" and body.get("voice") is True
        ref = MediaRef(
            url=_str(body.get("url")),
            content_type=_id(body.get("mime_type")),
            media_id=_id(body.get("id")),
            kind="voice" if voice else kind,
            caption=_str(body.get("caption")),
            filename=_str(body.get("filename")),
        )
        media, text = (ref,), ref.caption
    elif kind == "location":
        loc = _dict(raw.get("location"))
        latitude = _coordinate(loc.get("latitude"), 90)
        longitude = _coordinate(loc.get("longitude"), 180)
        if latitude is None or longitude is None:
            return None
        location = Location(
            latitude=latitude,
            longitude=longitude,
            address=_str(loc.get("address")),
            label=_str(loc.get("name")),
        )
    elif kind == "contacts":
        if not isinstance(raw.get("contacts"), list):
            return None
        meta["whatsapp"]["contacts"] = raw["contacts"]
    elif kind == "order":
        if not isinstance(raw.get("order"), dict):
            return None
        meta["whatsapp"]["order"] = raw["order"]
        text = _str(raw["order"].get("text"))
    elif kind == "button":  # a template's quick-reply button
        button = _dict(raw.get("button"))
        text, payload = _str(button.get("text")), _str(button.get("payload"))
        if not text and not payload:
            return None
    elif kind == "interactive":
        interactive = _dict(raw.get("interactive"))
        itype = _id(interactive.get("type"))
        reply = _dict(interactive.get(itype)) if itype else {}
        if itype in ("button_reply", "list_reply"):
            text, payload = _str(reply.get("title")), _str(reply.get("id"))
        elif itype == "nfm_reply":  # a completed WhatsApp Flow
            meta["whatsapp"]["flow_response"] = reply.get("response_json")
        else:
            return None
        if not payload and itype != "nfm_reply":
            return None
    else:  # reaction, edit, revoke, system, unsupported, ...
        return None
    return InboundMessage(
        channel="whatsapp",
        conversation_id=sender,
        message_id=mid,
        text=text,
        sender=sender,
        reply_to=wa_id,
        profile_name=names.get(wa_id, ""),
        media=media,
        location=location,
        button_payload=payload,
        metadata=meta,
    )


def _status(raw: Any) -> StatusUpdate | None:
    """One entry of ``value.statuses``; None without a string id and status."""
    raw = _dict(raw)
    message_id, status = _id(raw.get("id")), _id(raw.get("status"))
    if not message_id or not status:
        return None
    error = _dict((_list(raw.get("errors")) or [None])[0])
    details = _str(_dict(error.get("error_data")).get("details"))
    return StatusUpdate(
        message_id=message_id,
        status=status,
        recipient=_id(raw.get("recipient_id")),
        error_code=_code(error.get("code")),
        error=" — ".join(x for x in (_str(error.get("title")), details) if x),
    )


def parse_updates(payload: Any) -> tuple[list[InboundMessage], list[StatusUpdate], list[str]]:
    """A webhook body → (messages, statuses, what was ignored and why).

    ``payload`` is the decoded JSON (:func:`runtime.wire.loads_bounded`). Nothing in it
    is trusted to have the type Meta documents: an entry, change, message or status of
    the wrong type, or missing what it needs, is skipped with a reason, and the rest of
    the delivery is still read. It never raises.
    """
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    ignored: list[str] = []
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        return messages, statuses, ["not a whatsapp_business_account event"]
    if not isinstance(payload.get("entry"), list):
        return messages, statuses, ["entry is not a list"]
    for entry in payload["entry"]:
        changes = _dict(entry).get("changes")
        if not isinstance(changes, list):
            ignored.append("an entry without a list of changes")
            continue
        for change in changes:
            change = _dict(change)
            field, value = change.get("field"), change.get("value")
            if field != "messages":
                name = _str(field, 40)
                ignored.append(f"field {name!r}" if name else "a change without a field name")
                continue
            if not isinstance(value, dict):
                ignored.append("a change whose value is not an object")
                continue
            names = {}
            for contact in _list(value.get("contacts")):
                contact = _dict(contact)
                if _id(contact.get("wa_id")):
                    names[contact["wa_id"]] = _str(_dict(contact.get("profile")).get("name"))
            for raw in _list(value.get("messages")):
                msg = _message(raw, names) if isinstance(raw, dict) else None
                if msg is None:
                    ignored.append(_what(raw))
                else:
                    messages.append(msg)
            for raw in _list(value.get("statuses")):
                status = _status(raw)
                if status is None:
                    ignored.append("status without id")
                else:
                    statuses.append(status)
            for part in ("messages", "statuses", "contacts"):
                if value.get(part) is not None and not isinstance(value[part], list):
                    ignored.append(f"{part} is not a list")
    return messages, statuses, ignored


class WhatsAppChannel(InputChannel):
    name = "whatsapp"

    def __init__(self, services: ChannelServices) -> None:
        super().__init__(services)
        self.sender = WhatsAppOutput(self.settings, services.last_inbound)
        self.output = self.sender

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        w = settings.whatsapp
        required = (
            ("HABLA_WHATSAPP_PHONE_NUMBER_ID", w.phone_number_id),
            ("WHATSAPP_ACCESS_TOKEN", w.access_token),
            ("WHATSAPP_APP_SECRET", w.app_secret),
            ("WHATSAPP_VERIFY_TOKEN", w.verify_token),
        )
        return [name for name, value in required if not value]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/webhooks/whatsapp/webhook", self.verify),
            web.post("/webhooks/whatsapp/webhook", self.receive),
        ]

    async def verify(self, request: web.Request) -> web.Response:
        q = request.query
        token = q.get("hub.verify_token", "")
        ok = q.get("hub.mode") == "subscribe" and hmac.compare_digest(
            token.encode(), self.settings.whatsapp.verify_token.encode()
        )
        if not ok:
            raise web.HTTPForbidden(text="verification failed")
        return web.Response(text=q.get("hub.challenge", ""))

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Hub-Signature-256", "")
        if not valid_signature(self.settings.whatsapp.app_secret, body, header):
            logger.warning(
                "whatsapp: rejected a POST with a %s signature", "wrong" if header else "missing"
            )
            raise web.HTTPForbidden(text="invalid signature")
        try:
            payload = loads_bounded(body)
        except WireError as e:
            logger.info("whatsapp: refused a signed POST: %s", e)
            raise web.HTTPBadRequest(text="body is not JSON within bounds") from e
        messages, statuses, ignored = parse_updates(payload)
        for reason in ignored:
            logger.debug("whatsapp: ignored %s", reason)
        for status in statuses:
            await self.services.delivery_status(
                status.message_id, status.status, status.error_code, status.error
            )
            if status.status == "failed":
                logger.warning(
                    "whatsapp: message %s to %s failed: %s %s",
                    status.message_id,
                    mask_phone("+" + status.recipient),
                    status.error_code,
                    status.error,
                )
        for msg in messages:
            conversation = self.services.conversation_id(self.name, msg.sender)
            # the user just wrote: the customer-service window is open (a slot for stories)
            msg = replace(msg, conversation_id=conversation, slots={"whatsapp_window_open": True})
            if not await self.services.accept(msg, self.sender):
                logger.info(
                    "whatsapp: duplicate %s from %s ignored", msg.message_id, mask_phone(msg.sender)
                )
        return web.Response(text="ok")
