"""Rasa's REST channel, same JSON in and out, and a browser chat page for authors.

``POST /webhooks/rest/webhook`` with ``{"sender": "...", "message": "..."}`` returns
the bot's messages as ``[{"recipient_id": ..., "text": ..., "buttons": [...]}]``, so
existing Rasa tools work. It runs the whole turn before answering.

Access: with ``HABLA_REST_TOKEN`` set, requests need ``Authorization: Bearer <token>``
(or ``?token=``). Without it the channel answers only while the server is a local
development server (loopback address and no public URL); otherwise 403.

Status codes of the POST, in order (never 500): 403 without access; 400 when the body
is not JSON within :mod:`runtime.wire`'s bounds (invalid in its charset, nested over
64 deep, a number over 100 characters, NaN/Infinity), is not an object, or has a
``sender``/``message`` that is not a string or a ``message_id`` that is not a string
or an integer; 413 when ``message`` is over 4,096 characters or ``sender`` or
``message_id`` over 256; otherwise 200 with the bot's messages. A ``metadata`` that is
not an object is ignored.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from importlib import resources

from aiohttp import web

from channels.base import ChannelServices, InputChannel, OutputChannel
from runtime.messages import BotReply, Delivery, InboundMessage
from runtime.settings import Settings
from runtime.wire import loads_bounded

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096
MAX_ID_CHARS = 256  # sender and message_id


def is_local_dev(settings: Settings) -> bool:
    if settings.server.public_url:
        return False
    host = settings.server.host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CollectingOutput(OutputChannel):
    """Replies are returned in the HTTP response; buttons stay structured."""

    def __init__(self) -> None:
        self.replies: list[BotReply] = []

    def numbers_choices(self, reply: BotReply) -> bool:
        return False

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.replies.append(reply)
        return [Delivery(ok=True)]


class RestChannel(InputChannel):
    name = "rest"

    def __init__(self, services: ChannelServices) -> None:
        super().__init__(services)
        self.token = self.settings.rest.token

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        return [] if settings.rest.token or is_local_dev(settings) else ["HABLA_REST_TOKEN"]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/rest/webhook", self.receive),
            web.get("/webhooks/rest/", self.health),
            web.get("/", self.chat_page),
        ]

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat_page(self, request: web.Request) -> web.Response:
        page = resources.files("channels").joinpath("chat.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    async def receive(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong token")
        raw = await request.read()
        try:
            body = loads_bounded(raw.decode(request.charset or "utf-8"))
        except (LookupError, ValueError) as e:  # WireError, UnicodeDecodeError, a charset
            raise web.HTTPBadRequest(text=f"body is not JSON: {str(e)[:200]}") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        sender, text = body.get("sender") or "default", body.get("message")
        if not isinstance(text, str) or not isinstance(sender, str):
            raise web.HTTPBadRequest(text="'message' (and 'sender') must be strings")
        message_id = body.get("message_id") or ""
        if isinstance(message_id, bool) or not isinstance(message_id, (str, int)):
            raise web.HTTPBadRequest(text="'message_id' must be a string or an integer")
        message_id = str(message_id)  # an int of at most 100 digits (runtime.wire)
        if len(text) > MAX_MESSAGE_CHARS:
            raise web.HTTPRequestEntityTooLarge(MAX_MESSAGE_CHARS, len(text))
        for name, value in (("sender", sender), ("message_id", message_id)):
            if len(value) > MAX_ID_CHARS:
                raise web.HTTPRequestEntityTooLarge(
                    MAX_ID_CHARS, len(value), text=f"'{name}' is over {MAX_ID_CHARS} characters"
                )
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        msg = InboundMessage(
            channel="rest",
            conversation_id=sender,
            sender="",
            text=text,
            message_id=message_id,
            metadata=metadata or {},
        )
        replies = (await self.services.converse(msg, CollectingOutput())).replies
        return web.json_response([r.to_rasa(sender) for r in replies])
