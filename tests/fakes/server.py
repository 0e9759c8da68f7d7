"""Serving a fake's aiohttp app on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from abc import ABC, abstractmethod
from typing import Any

from aiohttp import web


async def serve(
    app: web.Application, port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on 127.0.0.1 (``port`` 0: any free one; over TLS with
    ``ssl_context``); the runner and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if ssl_context else 'http'}://127.0.0.1:{bound}"


class Outage:
    """A provider that is down for a while: every request in the window is refused
    with ``status`` (and counted), as a real one's edge answers 503 or 429."""

    def __init__(self) -> None:
        self.until, self.status, self.refused = 0.0, 503, 0

    def begin(self, seconds: float, status: int = 503) -> None:
        self.until, self.status = time.monotonic() + seconds, status

    def refuses(self) -> bool:
        """True (and counted) while the provider is down."""
        if time.monotonic() < self.until:
            self.refused += 1
            return True
        return False


class FakeAPI(ABC):
    """What every fake provider API can be told, whatever protocol it speaks: hold its
    next answers (:meth:`delay_next`), refuse every request for a while
    (:meth:`outage`), stop listening and come back on the same port with its records
    (:meth:`go_down`, :meth:`come_up`). A subclass gives its routes (:meth:`app`) and,
    at the start of each request, reads the body with :meth:`read_json`, then waits out
    a scripted delay with :meth:`hold` and checks :attr:`down`."""

    def __init__(self) -> None:
        self.down = Outage()
        self._delays: list[float] = []
        self._closing = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    @abstractmethod
    def app(self) -> web.Application:
        """The fake's routes."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for a fake served over HTTPS (None: plain HTTP)."""
        return None

    async def start(self) -> str:
        self.runner, self.url = await serve(self.app(), self.port, self.ssl_context())
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            self._closing.set()
            await self.runner.cleanup()
            self.runner = None
            self._closing.clear()

    async def go_down(self) -> None:
        """Stop listening (connections are refused); records are kept."""
        await self.close()

    async def come_up(self) -> None:
        """Listen again on the same port."""
        await self.start()

    def outage(self, seconds: float, status: int = 503) -> None:
        """Refuse every request for the next ``seconds`` (429 or 5xx)."""
        self.down.begin(seconds, status)

    def delay_next(self, seconds: float, n: int = 1) -> None:
        """Hold the next ``n`` answers for ``seconds``."""
        self._delays.extend([seconds] * n)

    async def hold(self) -> None:
        """A scripted slow answer, cut short when the fake closes."""
        if self._delays:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._delays.pop(0))

    @staticmethod
    async def read_json(request: web.Request) -> Any:
        """The request's JSON body (None without one; ``"<invalid json>"`` when it does
        not parse), so the fake can refuse it as the provider would."""
        if not request.can_read_body:
            return None
        try:
            return await request.json()
        except ValueError:
            return "<invalid json>"
