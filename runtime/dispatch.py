"""Background processing, in arrival order per conversation.

A webhook hands its message here and answers the provider at once. Each conversation
has a FIFO queue drained by one task, so two messages from the same user are handled
in the order they arrived, while different users run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class Dispatcher:
    def __init__(self) -> None:
        self._queues: dict[str, list[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, key: str, job: Job) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)
            return
        self._queues[key] = [job]
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._drain(key))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                job = queue[0]
                try:
                    await job()
                except Exception:
                    logger.exception("background job failed")
                queue.pop(0)
        finally:
            del self._queues[key]

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    @property
    def busy(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has finished; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self, timeout: float = 10.0) -> None:
        """Let running turns finish (up to ``timeout``), then cancel the rest."""
        if not await self.wait_idle(timeout):
            logger.warning("stopping with %d queued messages; they resume on restart", self.busy)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
