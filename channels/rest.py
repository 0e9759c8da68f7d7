"""Rasa's REST channel, same JSON in and out, and the inspector chat for authors.

``POST /webhooks/rest/webhook`` with ``{"sender": "...", "message": "..."}`` returns
the bot's messages as ``[{"recipient_id": ..., "text": ..., "buttons": [...]}]``, so
existing Rasa tools work. It runs the whole turn before answering.

A voice note comes as ``multipart/form-data``: the same fields, and the audio file in
``audio`` (what a browser's MediaRecorder makes: ``audio/webm;codecs=opus`` or OGG). It
takes WhatsApp's path: a :class:`~runtime.messages.MediaRef` the voice stages fetch
from this channel's output (the uploaded bytes), transcription, and a voice-note reply
(``audio``: a ``data:`` URL, or the signed media URL when a public URL is set).

``"debug": true`` (a JSON body, or a form field) asks for the turn's record:
``{"messages": [...], "debug": {...}}`` (``channels/inspect.py``: intent, entities,
language decision, changed slots, actions, each reply as Twilio, the Cloud API and a
call render it). Only with ``HABLA_REST_TOKEN`` set and given: without a token (a local
development server) such a request answers 403.

``GET``/``POST /webhooks/rest/language`` read and set a conversation's language
(``{"sender": ..., "language": "es"}``; a sticky choice, as if the user had asked for
it), for the inspector's language picker.

Access: with ``HABLA_REST_TOKEN`` set, requests need ``Authorization: Bearer <token>``
(or ``?token=``). Without it the channel answers only while the server is a local
development server (loopback address and no public URL); otherwise 403.

Status codes of the POST, in order (never 500): 403 without access; 400 when the body
is not JSON within :mod:`runtime.wire`'s bounds (invalid in its charset, nested over
64 deep, a number over 100 characters, NaN/Infinity), is not an object, or has a
``sender``/``message`` that is not a string or a ``message_id`` that is not a string
or an integer; 413 when ``message`` is over 4,096 characters or ``sender`` or
``message_id`` over 256; otherwise 200 with the bot's messages. A ``metadata`` that is
not an object is ignored. An ``audio`` part over ``HABLA_VOICE_MAX_BYTES`` is 413;
a form without a message or audio is 400.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import secrets
from importlib import resources
from typing import Any

from aiohttp import BodyPartReader, web

from channels.base import ChannelServices, InputChannel, OutputChannel
from channels.inspect import MARKER, inspection
from runtime.errors import MediaError
from runtime.messages import BotReply, Delivery, InboundMessage, MediaRef
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


MAX_FIELD_BYTES = 64 * 1024  # a form field other than the audio
UPLOAD = "upload"  # the media id of the voice note a request carried


class CollectingOutput(OutputChannel):
    """Replies are returned in the HTTP response; buttons stay structured. Media the
    user uploaded is served to the voice stages from memory, and a voice-note reply is
    kept here to go back in the response."""

    def __init__(self, uploads: dict[str, tuple[bytes, str]] | None = None) -> None:
        self.replies: list[BotReply] = []
        self.media: dict[str, tuple[bytes, str]] = dict(uploads or {})

    def numbers_choices(self, reply: BotReply) -> bool:
        return False

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.replies.append(reply)
        return [Delivery(ok=True)]

    async def fetch_media(self, media: MediaRef, max_bytes: int) -> tuple[bytes, str]:
        if media.media_id not in self.media:
            raise MediaError("no such upload")
        data, content_type = self.media[media.media_id]
        if len(data) > max_bytes:
            raise MediaError(f"media is {len(data)} bytes (limit {max_bytes})")
        return data, content_type

    async def upload_media(self, data: bytes, content_type: str) -> str:
        media_id = f"reply-{len(self.media)}"
        self.media[media_id] = (data, content_type)
        return media_id

    def to_rasa(self, reply: BotReply, recipient_id: str) -> dict[str, Any]:
        """Rasa's JSON; a voice note made here goes back inline, as a ``data:`` URL."""
        out = reply.to_rasa(recipient_id)
        media_id = reply.audio.removeprefix("media:")
        if media_id != reply.audio and media_id in self.media:
            data, content_type = self.media[media_id]
            out["audio"] = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        return out


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
            web.get("/webhooks/rest/language", self.get_language),
            web.post("/webhooks/rest/language", self.set_language),
            web.get("/", self.chat_page),
        ]

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        return self._token_given(request)

    def _token_given(self, request: web.Request) -> bool:
        """The caller presented the channel's token (never true without one set)."""
        if not self.token:
            return False
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def get_language(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong token")
        sender = request.query.get("sender", "")
        if not sender or len(sender) > MAX_ID_CHARS:
            raise web.HTTPBadRequest(text="'sender' is required (at most 256 characters)")
        return web.json_response(
            {
                "language": await self.services.language(sender),
                "languages": self.settings.languages,
            }
        )

    async def set_language(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong token")
        try:
            body = loads_bounded(await request.read())
        except (LookupError, ValueError) as e:
            raise web.HTTPBadRequest(text=f"body is not JSON: {str(e)[:200]}") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        sender, language = body.get("sender"), body.get("language")
        if not isinstance(sender, str) or not sender or len(sender) > MAX_ID_CHARS:
            raise web.HTTPBadRequest(text="'sender' is required (at most 256 characters)")
        if language not in self.settings.languages:
            raise web.HTTPBadRequest(text=f"'language' must be one of {self.settings.languages}")
        await self.services.set_language(sender, str(language))
        return web.json_response({"language": language, "languages": self.settings.languages})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat_page(self, request: web.Request) -> web.Response:
        page = resources.files("channels").joinpath("chat.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html")

    async def _form(self, request: web.Request) -> tuple[dict[str, Any], tuple[bytes, str] | None]:
        """A multipart form: its fields (bounded) and the voice note in ``audio``."""
        fields: dict[str, Any] = {}
        audio: tuple[bytes, str] | None = None
        limit = self.settings.voice.max_bytes
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise web.HTTPBadRequest(text="nested multipart is not accepted")
                bound = limit if part.name == "audio" else MAX_FIELD_BYTES
                chunks, size = [], 0
                while chunk := await part.read_chunk(65536):
                    size += len(chunk)
                    if size > bound:
                        raise web.HTTPRequestEntityTooLarge(bound, size)
                    chunks.append(chunk)
                data = b"".join(chunks)
                if part.name == "audio":
                    content_type = part.headers.get("Content-Type", "")
                    audio = (data, content_type)
                elif part.name:
                    fields[part.name] = data.decode(part.get_charset("utf-8"))
        except (ValueError, LookupError, AssertionError) as e:  # a malformed form
            raise web.HTTPBadRequest(text=f"malformed form: {str(e)[:200]}") from e
        if "debug" in fields:
            fields["debug"] = fields["debug"].lower() in ("1", "true", "yes")
        if "metadata" in fields:
            try:
                fields["metadata"] = loads_bounded(fields["metadata"])
            except ValueError as e:
                raise web.HTTPBadRequest(text="'metadata' is not JSON") from e
        fields.setdefault("message", "")
        if audio is None and not fields["message"]:
            raise web.HTTPBadRequest(text="a form needs 'message' or an 'audio' file")
        return fields, audio

    async def receive(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong token")
        audio: tuple[bytes, str] | None = None
        if request.content_type == "multipart/form-data":
            body, audio = await self._form(request)
        else:
            raw = await request.read()
            try:
                body = loads_bounded(raw.decode(request.charset or "utf-8"))
            except (LookupError, ValueError) as e:  # WireError, UnicodeDecodeError, a charset
                raise web.HTTPBadRequest(text=f"body is not JSON: {str(e)[:200]}") from e
            if not isinstance(body, dict):
                raise web.HTTPBadRequest(text="body must be a JSON object")
        debug = body.get("debug") is True
        if debug and not self._token_given(request):
            # the turn's record shows slots and actions: only for the token's holder
            raise web.HTTPForbidden(text="debug needs HABLA_REST_TOKEN, set and given")
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
        marker = secrets.token_hex(8)
        if debug:  # finds the message among the conversation's events afterwards
            metadata = {**(metadata or {}), MARKER: marker}
        uploads: dict[str, tuple[bytes, str]] = {}
        media: tuple[MediaRef, ...] = ()
        if audio is not None:
            uploads[UPLOAD] = audio
            media = (MediaRef(media_id=UPLOAD, content_type=audio[1], kind="voice"),)
        msg = InboundMessage(
            channel="rest",
            conversation_id=sender,
            sender="",
            text=text,
            message_id=message_id,
            metadata=metadata or {},
            media=media,
        )
        output = CollectingOutput(uploads)
        ctx = await self.services.converse(msg, output)
        messages = [output.to_rasa(r, sender) for r in ctx.replies]
        if not debug:
            return web.json_response(messages)
        events = await self.services.events(sender)
        return web.json_response({"messages": messages, "debug": inspection(ctx, events, marker)})
