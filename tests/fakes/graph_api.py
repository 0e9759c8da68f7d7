"""A local fake of the WhatsApp Cloud API (Graph API) send endpoints.

It checks the bearer token, the API version in the path and the phone-number id,
validates message bodies against Meta's documented limits, records what it accepted,
and answers like Graph (``{"messages": [{"id": "wamid..."}]}`` or an ``error``
object). Failures can be scripted per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

from aiohttp import web

from tests.fakes.server import Outage, serve


class FakeGraphAPI:
    def __init__(self, token: str, phone_number_id: str, version: str = "v21.0") -> None:
        self.token, self.phone_number_id, self.version = token, phone_number_id, version
        self.sent: list[dict[str, Any]] = []
        self.read: list[str] = []
        self.uploads: list[dict[str, Any]] = []
        self.failures: list[tuple[int, int, str]] = []
        self.down = Outage()
        self.attempts = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.media_store: dict[str, tuple[bytes, str]] = {}  # user media id → bytes, type
        self.media_fetches: list[str] = []

    def add_media(self, data: bytes, content_type: str) -> str:
        """Media a user sent: its id, as a webhook would carry it."""
        media_id = f"{next(self._ids) + 900000000000000}"
        self.media_store[media_id] = (data, content_type)
        return media_id

    def fail_next(self, status: int, code: int, message: str = "error") -> None:
        self.failures.append((status, code, message))

    def outage(self, seconds: float, status: int = 503) -> None:
        """Refuse every message for the next ``seconds`` (the Graph API down)."""
        self.down.begin(seconds, status)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{version}/{phone}/messages", self.messages)
        app.router.add_post("/{version}/{phone}/media", self.media)
        app.router.add_get("/download/{media_id}", self.download)  # before the catch-all
        app.router.add_get("/{version}/{media_id}", self.media_info)
        self.runner, self.url = await serve(app)
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def error(status: int, code: int, message: str) -> web.Response:
        body = {
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "fbtrace_id": "AbCdEf",
            }
        }
        return web.json_response(body, status=status)

    def _check_request(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, 190, "Invalid OAuth access token.")
        if request.match_info["version"] != self.version:
            return self.error(400, 2500, f"Unknown path components: {request.path}")
        if request.match_info["phone"] != self.phone_number_id:
            return self.error(400, 100, "Unsupported post request. Object does not exist")
        return None

    async def messages(self, request: web.Request) -> web.Response:
        self.attempts += 1
        problem = self._check_request(request)
        if problem is not None:
            return problem
        body = await request.json()
        if body.get("messaging_product") != "whatsapp":
            return self.error(400, 100, "messaging_product is required")
        if body.get("status") == "read":
            self.read.append(str(body.get("message_id")))
            return web.json_response({"success": True})
        if self.failures:
            return self.error(*self.failures.pop(0))
        if self.down.refuses():
            return self.error(self.down.status, 2, "Service temporarily unavailable")
        invalid = validate(body)
        if invalid:
            return self.error(400, 131009, f"Parameter value is not valid: {invalid}")
        wamid = f"wamid.FAKE{next(self._ids):06d}"
        async with self._changed:
            self.sent.append(body | {"_wamid": wamid})
            self._changed.notify_all()
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
        )

    async def media_info(self, request: web.Request) -> web.Response:
        """GET /{media-id}: the download URL, type, size and hash (token required)."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, 190, "Invalid OAuth access token.")
        media_id = request.match_info["media_id"]
        if media_id not in self.media_store:
            return self.error(400, 100, "Unsupported get request. Object does not exist")
        data, content_type = self.media_store[media_id]
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"{self.url}/download/{media_id}",
                "mime_type": content_type,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data),
                "id": media_id,
            }
        )

    async def download(self, request: web.Request) -> web.Response:
        """The media URL also wants the token (Meta answers 404 without it)."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=404)
        media_id = request.match_info["media_id"]
        self.media_fetches.append(media_id)
        data, content_type = self.media_store[media_id]
        return web.Response(body=data, content_type=content_type)

    async def media(self, request: web.Request) -> web.Response:
        problem = self._check_request(request)
        if problem is not None:
            return problem
        form = await request.post()
        file = form.get("file")
        if form.get("messaging_product") != "whatsapp" or file is None:
            return self.error(400, 100, "messaging_product and file are required")
        data = file.file.read()  # type: ignore[union-attr]
        media_id = f"media-{next(self._ids)}"
        self.uploads.append({"id": media_id, "type": form.get("type"), "bytes": data})
        return web.json_response({"id": media_id})

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= count)

        await asyncio.wait_for(reached(), timeout)
        return self.sent


def validate(body: dict[str, Any]) -> str:
    """The first documented limit a message breaks, or ''."""
    if not body.get("to"):
        return "to"
    kind = body.get("type")
    if kind == "text":
        text = (body.get("text") or {}).get("body", "")
        return "" if 0 < len(text) <= 4096 else "text.body length"
    if kind in ("image", "document", "audio", "video", "sticker"):
        media = body.get(kind) or {}
        return "" if media.get("link") or media.get("id") else f"{kind}.link or id"
    if kind == "template":
        t = body.get("template") or {}
        return "" if t.get("name") and (t.get("language") or {}).get("code") else "template"
    if kind == "interactive":
        i = body.get("interactive") or {}
        text = (i.get("body") or {}).get("text", "")
        if not 0 < len(text) <= 1024:
            return "interactive.body.text length"
        if i.get("type") == "button":
            buttons = (i.get("action") or {}).get("buttons") or []
            if not 1 <= len(buttons) <= 3:
                return "buttons count"
            ids = [b["reply"]["id"] for b in buttons]
            if len(set(ids)) != len(ids) or any(not 0 < len(x) <= 256 for x in ids):
                return "button ids"
            if any(not 0 < len(b["reply"]["title"]) <= 20 for b in buttons):
                return "button title length"
            return ""
        if i.get("type") == "list":
            action = i.get("action") or {}
            rows = [r for s in action.get("sections") or [] for r in s.get("rows") or []]
            if not 1 <= len(rows) <= 10 or not 0 < len(action.get("button", "")) <= 20:
                return "list rows or button"
            if any(not 0 < len(r["title"]) <= 24 or not 0 < len(r["id"]) <= 200 for r in rows):
                return "row title or id"
            return ""
        return "interactive.type"
    return f"type {kind!r}"
