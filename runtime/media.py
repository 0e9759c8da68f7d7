"""Generated media (voice-note replies) served at unguessable, signed, expiring URLs.

Twilio and Meta fetch outbound media by URL. Each file gets a random 192-bit name, and
its URL carries an expiry time and an HMAC-SHA256 signature over both, so a URL can
neither be guessed nor extended. After the expiry the URL answers 404 and a sweeper
deletes the file.

    GET /media/{name}?e=<expiry epoch>&s=<signature>
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

SUFFIXES = {"audio/ogg": ".ogg", "audio/mpeg": ".mp3", "audio/wav": ".wav"}
TYPES = {v: k for k, v in SUFFIXES.items()}


class MediaHost:
    def __init__(self, folder: Path, secret: str, ttl_s: int, public_base: str) -> None:
        self.folder = folder
        self.key = secret.encode() if secret else secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self.public_base = public_base.rstrip("/")
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def public(self) -> bool:
        """Whether providers can reach the URLs (a public base URL is configured)."""
        return bool(self.public_base)

    def _sign(self, name: str, expires: int) -> str:
        mac = hmac.new(self.key, f"{name}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def url(self, name: str, expires: int) -> str:
        return f"{self.public_base}/media/{name}?e={expires}&s={self._sign(name, expires)}"

    async def put(self, data: bytes, content_type: str) -> str:
        """Store ``data``; its signed URL (absolute when a public base is set)."""
        name = secrets.token_urlsafe(24) + SUFFIXES.get(content_type, ".bin")
        expires = int(time.time()) + self.ttl_s

        def write() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / name)

        await asyncio.to_thread(write)
        return self.url(name, expires)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/media/{name}", self.serve)]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            expires = int(request.query.get("e", ""))
        except ValueError:
            raise web.HTTPNotFound() from None
        given = request.query.get("s", "")
        valid = hmac.compare_digest(given.encode(), self._sign(name, expires).encode())
        path = self.folder / name
        if not valid or expires < time.time() or "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        content_type = TYPES.get(path.suffix, "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type})

    def sweep(self, now: float | None = None) -> int:
        """Delete files older than the TTL (their URLs have expired); how many."""
        now = time.time() if now is None else now
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > self.ttl_s + 60:
                    path.unlink()
                    removed += 1
        return removed

    async def start(self) -> None:
        async def loop() -> None:
            while True:
                removed = await asyncio.to_thread(self.sweep)
                if removed:
                    logger.debug("deleted %d expired media files", removed)
                await asyncio.sleep(min(300, max(30, self.ttl_s / 4)))

        self._sweeper = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
