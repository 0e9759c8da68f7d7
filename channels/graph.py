"""Sending through the WhatsApp Cloud API (Graph API).

One :class:`GraphClient` per server with an injected aiohttp session: it builds
requests and maps Graph errors once (rate limits and 5xx are transient; re-engagement
and undeliverable numbers have their own types). :class:`WhatsAppOutput` renders bot
replies: text split at 4,096 characters, up to 3 buttons as reply buttons, 4–10 as a
list message, more as numbered text; images and documents by link; a template instead
of free-form text outside the 24-hour customer-service window.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import aiohttp

from channels.base import MediaError, OutputChannel, download
from runtime.errors import error_for_status
from runtime.messages import BotReply, Button, Delivery, InboundMessage, MediaRef
from runtime.retry import PermanentError, TransientError, with_retries
from runtime.settings import Settings

logger = logging.getLogger(__name__)

TEXT_LIMIT = 4096
BODY_LIMIT = 1024  # interactive message body
BUTTON_TITLE_LIMIT = 20
ROW_TITLE_LIMIT = 24
BUTTON_ID_LIMIT = 256
ROW_ID_LIMIT = 200
MAX_BUTTONS = 3
MAX_ROWS = 10

# Graph error codes (developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
TRANSIENT_CODES = {1, 2, 4, 17, 80007, 130429, 131000, 131016, 131048, 131056, 133004}
REENGAGEMENT_CODE = 131047
UNDELIVERABLE_CODES = {131026, 131021, 131049}


class ReengagementRequired(PermanentError):
    """More than 24 hours since the user wrote: only a template may be sent."""


def _limit(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1].rstrip() + "…"


class GraphClient:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        w = settings.whatsapp
        self.session = session
        self.base = f"{w.api_base.rstrip('/')}/{w.api_version}"
        self.phone_number_id = w.phone_number_id
        self.headers = {"Authorization": f"Bearer {w.access_token}"}
        self.timeout = aiohttp.ClientTimeout(total=settings.send.timeout_s)

    async def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.base}/{path}"
        try:
            async with self.session.post(
                url, headers=self.headers, timeout=self.timeout, **kwargs
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                if resp.status < 400 and "error" not in body:
                    return dict(body)
                raise self._error(resp.status, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e

    @staticmethod
    def _error(status: int, body: dict[str, Any]) -> Exception:
        err = body.get("error") or {}
        code = err.get("code")
        reason = f"graph {status} error {code}: {err.get('message', '')}".strip()
        details = (err.get("error_data") or {}).get("details")
        if details:
            reason += f" ({details})"
        if code == REENGAGEMENT_CODE:
            return ReengagementRequired(reason)
        if code in TRANSIENT_CODES:
            return TransientError(reason)
        return error_for_status(status, reason)

    async def send_message(self, to: str, message: dict[str, Any]) -> str:
        """POST /{phone-number-id}/messages; returns the message's wamid."""
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
        body = await self._post(f"{self.phone_number_id}/messages", json=payload | message)
        return str(body["messages"][0]["id"])

    async def mark_as_read(self, message_id: str) -> None:
        await self._post(
            f"{self.phone_number_id}/messages",
            json={"messaging_product": "whatsapp", "status": "read", "message_id": message_id},
        )

    async def media_url(self, media_id: str) -> dict[str, Any]:
        """GET /{media-id}: the short-lived download URL, mime type, size and sha256."""
        url = f"{self.base}/{media_id}"
        try:
            async with self.session.get(url, headers=self.headers, timeout=self.timeout) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                if resp.status < 400 and "url" in body:
                    return dict(body)
                raise self._error(resp.status, body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e

    async def upload_media(self, data: bytes, mime_type: str, filename: str = "file") -> str:
        """POST /{phone-number-id}/media (multipart); returns the media id."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        form.add_field("file", data, filename=filename, content_type=mime_type)
        body = await self._post(f"{self.phone_number_id}/media", data=form)
        return str(body["id"])


def render(reply: BotReply) -> list[dict[str, Any]]:
    """A bot reply as Graph API message objects (without ``to``)."""
    if reply.custom and isinstance(reply.custom.get("whatsapp"), dict):
        return [reply.custom["whatsapp"]]  # authors can send any Cloud API message
    out: list[dict[str, Any]] = []
    text = reply.text
    buttons = reply.buttons
    if buttons and interactive_fits(reply):
        body = _limit(text or "Choose an option", BODY_LIMIT)
        if len(buttons) <= MAX_BUTTONS:
            action: dict[str, Any] = {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": b.payload, "title": _limit(b.title, BUTTON_TITLE_LIMIT)},
                    }
                    for b in buttons
                ]
            }
            interactive: dict[str, Any] = {
                "type": "button",
                "body": {"text": body},
                "action": action,
            }
        else:
            rows = [
                {"id": b.payload, "title": _limit(b.title, ROW_TITLE_LIMIT)}
                | ({"description": _limit(b.title, 72)} if len(b.title) > ROW_TITLE_LIMIT else {})
                for b in buttons
            ]
            interactive = {
                "type": "list",
                "body": {"text": body},
                "action": {"button": "Options", "sections": [{"title": "Options", "rows": rows}]},
            }
        out.append({"type": "interactive", "interactive": interactive})
        text = ""
    elif buttons:
        text = OutputChannel.numbered_text(reply)
    for part in _split(text):
        out.append({"type": "text", "text": {"body": part, "preview_url": "http" in part}})
    if reply.image:
        out.append({"type": "image", "image": {"link": reply.image}})
    if reply.attachment:
        out.append({"type": "document", "document": {"link": reply.attachment}})
    if reply.audio:
        media_id = reply.audio.removeprefix("media:")
        ref = {"id": media_id} if media_id != reply.audio else {"link": reply.audio}
        out.append({"type": "audio", "audio": ref})
    return out


def interactive_fits(reply: BotReply) -> bool:
    """Buttons go native when Meta's limits allow; otherwise numbered text."""
    n = len(reply.buttons)
    if not 1 <= n <= MAX_ROWS or len(reply.text) > BODY_LIMIT:
        return False
    limit = BUTTON_ID_LIMIT if n <= MAX_BUTTONS else ROW_ID_LIMIT
    ids = [b.payload for b in reply.buttons]
    return all(0 < len(i) <= limit for i in ids) and len(set(ids)) == n


def _split(text: str) -> list[str]:
    from channels.twilio import split_text

    return split_text(text, TEXT_LIMIT)


class WhatsAppOutput(OutputChannel):
    def __init__(self, settings: Settings, last_inbound: Any) -> None:
        self.settings = settings
        self.last_inbound = last_inbound
        self.session: aiohttp.ClientSession | None = None
        self.client: GraphClient | None = None
        self._template_sent: dict[str, float] = {}  # conversation → when (one per turn)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self.client = GraphClient(self.settings, self.session)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def numbers_choices(self, reply: BotReply) -> bool:
        return bool(reply.buttons) and not interactive_fits(reply)

    async def acknowledge(self, msg: InboundMessage) -> None:
        if self.settings.whatsapp.mark_as_read and msg.message_id and self.client:
            await self.client.mark_as_read(msg.message_id)

    async def fetch_media(self, media: MediaRef, max_bytes: int) -> tuple[bytes, str]:
        """Media id → URL (with the token) → bytes, checked against size and sha256."""
        if self.client is None or self.session is None:
            raise MediaError("WhatsAppOutput.start() was not awaited")
        if not media.media_id:
            raise MediaError("no media id")
        try:
            info = await self.client.media_url(media.media_id)
        except TransientError as e:
            raise MediaError(str(e), transient=True) from e
        except PermanentError as e:
            raise MediaError(str(e)) from e
        size = int(info.get("file_size") or 0)
        if size > max_bytes:
            raise MediaError(f"media is {size} bytes (limit {max_bytes})")
        data, declared = await download(
            self.session,
            str(info["url"]),
            max_bytes=max_bytes,
            timeout_s=self.settings.send.timeout_s,
            headers=self.client.headers,
        )
        digest = str(info.get("sha256") or "")
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise MediaError("media does not match its sha256", transient=True)
        return data, media.content_type or str(info.get("mime_type") or declared)

    async def upload_media(self, data: bytes, content_type: str) -> str:
        if self.client is None:
            raise MediaError("WhatsAppOutput.start() was not awaited")
        try:
            return await self.client.upload_media(data, content_type, "voice.ogg")
        except (TransientError, PermanentError) as e:
            raise MediaError(str(e), transient=e.transient) from e

    async def window_open(self, msg: InboundMessage) -> bool:
        last = await self.last_inbound("whatsapp", msg.conversation_id)
        return last is not None and time.time() - last < self.settings.whatsapp.window_hours * 3600

    def template(self, msg: InboundMessage) -> dict[str, Any] | None:
        w = self.settings.whatsapp
        if not w.template:
            return None
        template: dict[str, Any] = {"name": w.template, "language": {"code": w.template_language}}
        params = [p for p in w.template_params.split("|") if p] if w.template_params else []
        if params:
            values = [p.replace("{profile_name}", msg.profile_name or "") for p in params]
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}
            ]
        return {"type": "template", "template": template}

    async def _send_one(self, to: str, message: dict[str, Any]) -> Delivery:
        assert self.client is not None, "WhatsAppOutput.start() was not awaited"
        client = self.client
        try:
            wamid, attempts = await with_retries(
                lambda: client.send_message(to, message),
                attempts=self.settings.send.max_attempts,
                backoff_s=self.settings.send.backoff_s,
                family="channel",
                provider="whatsapp",
            )
            return Delivery(ok=True, provider_id=wamid, attempts=attempts)
        except TransientError as e:
            return Delivery(
                ok=False, error=str(e), attempts=self.settings.send.max_attempts, transient=True
            )

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        to = msg.reply_to
        if not await self.window_open(msg):
            return [await self._send_template(msg, "outside the 24-hour window")]
        out = []
        for message in render(reply):
            try:
                out.append(await self._send_one(to, message))
            except ReengagementRequired as e:
                out.append(Delivery(ok=False, error=str(e)))
                out.append(await self._send_template(msg, "re-engagement required"))
                break
            except PermanentError as e:
                out.append(Delivery(ok=False, error=str(e)))
        return out

    async def _send_template(self, msg: InboundMessage, why: str) -> Delivery:
        template = self.template(msg)
        if template is None:
            return Delivery(
                ok=False, error=f"{why}; no template configured (HABLA_WHATSAPP_TEMPLATE)"
            )
        now = time.monotonic()
        if now - self._template_sent.get(msg.conversation_id, -1e9) < 60:
            return Delivery(ok=False, error=f"{why}; template already sent")
        self._template_sent = {k: t for k, t in self._template_sent.items() if now - t < 60}
        self._template_sent[msg.conversation_id] = now
        try:
            delivery = await self._send_one(msg.reply_to, template)
        except PermanentError as e:
            return Delivery(ok=False, error=f"{why}; template failed: {e}")
        logger.info("whatsapp: %s, sent template %s", why, self.settings.whatsapp.template)
        return delivery


def button_from_reply(reply: dict[str, Any]) -> Button:
    return Button(title=str(reply.get("title", "")), payload=str(reply.get("id", "")))
