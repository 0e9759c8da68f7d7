"""A local fake of Twilio's Messages API that speaks the real wire protocol.

It checks HTTP Basic auth (account SID + auth token), parses the form the official SDK
posts to ``/2010-04-01/Accounts/{AccountSid}/Messages.json``, records it and answers
with a message resource like Twilio's. Failures can be scripted per request.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from tests.fakes.server import Outage, serve


@dataclass
class SentMessage:
    account_sid: str
    to: str
    from_: str
    body: str
    media_urls: list[str]
    status_callback: str
    sid: str
    at: float = field(default_factory=time.monotonic)


class FakeTwilioAPI:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.sent: list[SentMessage] = []
        self.rejected_auth = 0
        self.failures: list[tuple[int, int, str]] = []  # (http status, twilio code, message)
        self.attempts = 0
        self.delays: list[float] = []  # seconds to stall the next requests, one each
        # seconds to hold the answers of the next messages, each recorded at once (a
        # client that gives up meanwhile does not know the message exists)
        self.answer_delays: list[float] = []
        self.listed = 0  # GET Messages.json requests
        self._resources: list[dict[str, Any]] = []
        self.down = Outage()
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.media: dict[str, tuple[bytes, str]] = {}  # media sid → (bytes, content type)
        self.media_fetches: list[str] = []
        # called with each message as it is accepted (benchmarks route replies by it)
        self.listeners: list[Callable[[SentMessage], None]] = []

    def add_media(self, data: bytes, content_type: str) -> str:
        """Store a user's media as Twilio does; the MediaUrl a webhook would carry."""
        sid = f"ME{next(self._ids):032x}"
        self.media[sid] = (data, content_type)
        message = f"MM{next(self._ids):032x}"
        return f"{self.url}/2010-04-01/Accounts/{self.account_sid}/Messages/{message}/Media/{sid}"

    def fail_next(self, status: int, code: int = 20500, message: str = "error") -> None:
        self.failures.append((status, code, message))

    def outage(self, seconds: float, status: int = 503) -> None:
        """Answer ``status`` to every message for the next ``seconds`` (Twilio down)."""
        self.down.begin(seconds, status)

    @property
    def refused(self) -> int:
        return self.down.refused

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self.list_messages)
        app.router.add_get(
            "/2010-04-01/Accounts/{sid}/Messages/{message}/Media/{media}", self.get_media
        )
        app.router.add_get("/storage/{media}", self.storage)
        self.runner, self.url = await serve(app, port)
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user == self.account_sid and password == self.auth_token

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        body = {"code": code, "message": message, "more_info": "", "status": status}
        return web.json_response(body, status=status)

    async def get_media(self, request: web.Request) -> web.Response:
        """A media URL with Basic auth redirects to short-lived storage, as Twilio does."""
        if not self._authorized(request):
            self.rejected_auth += 1
            return self._error(401, 20003, "Authenticate")
        media = request.match_info["media"]
        if request.match_info["sid"] != self.account_sid or media not in self.media:
            return self._error(404, 20404, "The requested resource was not found")
        raise web.HTTPFound(f"/storage/{media}")

    async def storage(self, request: web.Request) -> web.Response:
        media = request.match_info["media"]
        if media not in self.media:
            return web.Response(status=404)
        self.media_fetches.append(media)
        data, content_type = self.media[media]
        return web.Response(body=data, content_type=content_type)

    async def create(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if not self._authorized(request):
            self.rejected_auth += 1
            return self._error(401, 20003, "Authenticate")
        if request.match_info["sid"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        form = await request.post()
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if self.failures:
            return self._error(*self.failures.pop(0))
        if self.down.refuses():
            return self._error(self.down.status, 20500, "Service unavailable")
        if not form.get("To") or not (form.get("From") or form.get("MessagingServiceSid")):
            return self._error(400, 21604, "A 'To' and 'From' phone number is required.")
        if not form.get("Body") and not form.getall("MediaUrl", []):
            return self._error(400, 21602, "Message body is required.")
        if len(str(form.get("Body", ""))) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds 1600")
        sid = f"SM{next(self._ids):032x}"
        msg = SentMessage(
            account_sid=self.account_sid,
            to=str(form["To"]),
            from_=str(form.get("From", "")),
            body=str(form.get("Body", "")),
            media_urls=[str(u) for u in form.getall("MediaUrl", [])],
            status_callback=str(form.get("StatusCallback", "")),
            sid=sid,
        )
        async with self._changed:
            self.sent.append(msg)
            for listener in self.listeners:
                listener(msg)
            self._changed.notify_all()
        resource: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": msg.to,
            "from": msg.from_,
            "body": msg.body,
            "status": "queued",
            "num_media": str(len(msg.media_urls)),
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": email.utils.format_datetime(datetime.now(timezone.utc)),
            "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        self._resources.append(resource)
        if self.answer_delays:
            await asyncio.sleep(self.answer_delays.pop(0))
        return web.Response(status=201, text=json.dumps(resource), content_type="application/json")

    async def list_messages(self, request: web.Request) -> web.Response:
        """Messages, newest first, filtered by ``To`` and ``From``, one page as Twilio
        pages them."""
        self.listed += 1
        if not self._authorized(request):
            self.rejected_auth += 1
            return self._error(401, 20003, "Authenticate")
        if request.match_info["sid"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        if self.down.refuses():
            return self._error(self.down.status, 20500, "Service unavailable")
        to, from_ = request.query.get("To"), request.query.get("From")
        size = min(int(request.query.get("PageSize", "50")), 1000)
        found = [
            r
            for r in reversed(self._resources)
            if (to is None or r["to"] == to) and (from_ is None or r["from"] == from_)
        ][:size]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        page = {
            "messages": found,
            "page": 0,
            "page_size": size,
            "first_page_uri": f"{uri}?PageSize={size}&Page=0",
            "next_page_uri": None,
            "previous_page_uri": None,
            "uri": f"{uri}?PageSize={size}&Page=0",
            "start": 0,
            "end": max(len(found) - 1, 0),
        }
        return web.json_response(page)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[SentMessage]:
        """Wait until at least ``count`` messages were received in total."""

        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= count)

        await asyncio.wait_for(reached(), timeout)
        return self.sent

    def to(self, address: str) -> list[SentMessage]:
        return [m for m in self.sent if m.to == address]
