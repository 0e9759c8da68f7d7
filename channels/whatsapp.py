"""WhatsApp Cloud API (Meta) webhooks.

``GET /webhooks/whatsapp/webhook``: the verification handshake. ``POST``: events,
verified with ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app
secret), failing closed. One POST may carry several messages and statuses; each
message becomes a typed :class:`InboundMessage` (or is ignored with a debug log), each
status is stored with the message it belongs to. The webhook answers 200 at once; turns
run in the background, in order per conversation, once per ``wamid``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from channels.base import ChannelServices, InputChannel
from channels.graph import WhatsAppOutput
from runtime.messages import InboundMessage, Location, MediaRef, mask_phone
from runtime.settings import Settings

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


def _message(raw: dict[str, Any], names: dict[str, str]) -> InboundMessage | None:
    """One entry of ``value.messages``, or None for what a turn should not see."""
    kind = raw.get("type", "")
    wa_id = str(raw.get("from") or raw.get("from_user_id") or "")
    mid = str(raw.get("id") or "")
    if not wa_id or not mid:
        return None
    sender = "+" + wa_id if wa_id.isdigit() else wa_id
    text, payload, location = "", "", None
    media: tuple[MediaRef, ...] = ()
    meta: dict[str, Any] = {"whatsapp": {"type": kind, "wa_id": wa_id}}
    context = raw.get("context") or {}
    if context.get("id"):
        meta["whatsapp"]["reply_to_message_id"] = context["id"]
    if context.get("forwarded") or context.get("frequently_forwarded"):
        meta["whatsapp"]["forwarded"] = True
    if raw.get("referral"):
        meta["whatsapp"]["referral"] = raw["referral"]
    if kind == "text":
        text = str((raw.get("text") or {}).get("body", ""))
    elif kind in MEDIA_TYPES:
        body = raw.get(kind) or {}
        voice = kind == "audio" and bool(body.get("voice"))
        ref = MediaRef(
            url=str(body.get("url", "")),
            content_type=str(body.get("mime_type", "")),
            media_id=str(body.get("id", "")),
            kind="voice" if voice else kind,
            caption=str(body.get("caption", "")),
            filename=str(body.get("filename", "")),
        )
        media, text = (ref,), ref.caption
    elif kind == "location":
        loc = raw.get("location") or {}
        try:
            location = Location(
                latitude=float(loc["latitude"]),
                longitude=float(loc["longitude"]),
                address=str(loc.get("address", "")),
                label=str(loc.get("name", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None
    elif kind == "contacts":
        meta["whatsapp"]["contacts"] = raw.get("contacts") or []
    elif kind == "order":
        meta["whatsapp"]["order"] = raw.get("order") or {}
        text = str((raw.get("order") or {}).get("text", ""))
    elif kind == "button":  # a template's quick-reply button
        button = raw.get("button") or {}
        text, payload = str(button.get("text", "")), str(button.get("payload", ""))
    elif kind == "interactive":
        interactive = raw.get("interactive") or {}
        reply = interactive.get(interactive.get("type", "")) or {}
        if interactive.get("type") in ("button_reply", "list_reply"):
            text, payload = str(reply.get("title", "")), str(reply.get("id", ""))
        elif interactive.get("type") == "nfm_reply":  # a completed WhatsApp Flow
            meta["whatsapp"]["flow_response"] = reply.get("response_json")
        else:
            return None
        if not payload and interactive.get("type") != "nfm_reply":
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


def parse_updates(payload: Any) -> tuple[list[InboundMessage], list[StatusUpdate], list[str]]:
    """A webhook body → (messages, statuses, what was ignored and why)."""
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    ignored: list[str] = []
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        return messages, statuses, ["not a whatsapp_business_account event"]
    for entry in payload.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            field, value = change.get("field"), change.get("value") or {}
            if field != "messages":
                ignored.append(f"field {field}")
                continue
            names = {
                str(c.get("wa_id")): str((c.get("profile") or {}).get("name", ""))
                for c in value.get("contacts") or []
            }
            for raw in value.get("messages") or []:
                msg = _message(raw, names) if isinstance(raw, dict) else None
                if msg is None:
                    ignored.append(f"message type {(raw or {}).get('type')!r}")
                else:
                    messages.append(msg)
            for raw in value.get("statuses") or []:
                if not raw.get("id") or not raw.get("status"):
                    ignored.append("status without id")
                    continue
                error = (raw.get("errors") or [{}])[0]
                details = (error.get("error_data") or {}).get("details", "")
                statuses.append(
                    StatusUpdate(
                        message_id=str(raw["id"]),
                        status=str(raw["status"]),
                        recipient=str(raw.get("recipient_id", "")),
                        error_code=str(error.get("code", "")),
                        error=" — ".join(x for x in (error.get("title"), details) if x),
                    )
                )
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
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise web.HTTPBadRequest(text="body is not JSON") from e
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
