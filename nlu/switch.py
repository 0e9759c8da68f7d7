"""An engine that can be replaced between turns (``habla run --watch``).

:class:`SwitchableEngine` forwards every turn to the current engine. :meth:`swap`
closes a gate (turns that arrive now wait at it, in the order they came), waits for the
turns already inside the engine to finish, runs ``before`` (bind the tracker store to
the new engine), switches, and opens the gate. No turn is dropped, none runs twice, and
a conversation's turns keep their order (each turn also holds its conversation's lock
while it waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from nlu.engine import Engine
from runtime.messages import BotReply, InboundMessage


class SwitchableEngine(Engine):
    def __init__(self, engine: Engine) -> None:
        self.current = engine
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._swapping = asyncio.Lock()

    async def load(self) -> None:
        await self.current.load()

    def bind_tracker_store(self, tracker_store: Any) -> None:
        self.current.bind_tracker_store(tracker_store)

    def bind_services(self, dependencies: Mapping[str, object]) -> None:
        self.current.bind_services(dependencies)

    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        while not self._open.is_set():
            await self._open.wait()
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self.current.handle(msg)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def swap(self, engine: Engine, before: Callable[[], None] | None = None) -> Engine:
        """Make ``engine`` (loaded) the current one between turns; the previous one back
        (the caller closes it)."""
        async with self._swapping:
            self._open.clear()
            try:
                await self._idle.wait()
                if before is not None:
                    before()
                previous, self.current = self.current, engine
            finally:
                self._open.set()
            return previous

    async def close(self) -> None:
        await self.current.close()
