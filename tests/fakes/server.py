"""Serving a fake's aiohttp app on a free loopback port."""

from __future__ import annotations

import time

from aiohttp import web


async def serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    """Start ``app`` on 127.0.0.1 (``port`` 0: any free one); the runner and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{bound}"


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
