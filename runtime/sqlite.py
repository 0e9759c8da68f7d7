"""SQLite off the event loop: one connection owned by one worker thread.

Every embedded store (conversation state, inbox, deliveries) shares one file and one
connection. Calls are serialised on the thread, so there are no locking surprises,
and the event loop only awaits futures.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


WAL_ATTEMPTS = 100


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL (a setting the file keeps). Processes opening the same
    new file at once (a server and its engine workers) race for the lock this takes,
    and SQLite answers the loser "database is locked" at once, without waiting for its
    busy timeout: it retries for up to 5 s. On the database thread: a short sleep."""
    for attempt in range(WAL_ATTEMPTS):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.05)


class SQLite:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread inside one transaction."""

        def job() -> T:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread in a read transaction: one
        consistent snapshot that takes no write lock (WAL: writers go on meanwhile)."""

        def job() -> T:
            conn = self._connect()
            conn.execute("BEGIN DEFERRED")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        return await self.run(lambda c: c.execute(sql, tuple(params)).rowcount)

    async def script(self, sql: str) -> None:
        def job() -> None:
            self._connect().executescript(sql)

        await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        def job() -> list[tuple[Any, ...]]:
            return self._connect().execute(sql, tuple(params)).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        def job() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, job)
        self._executor.shutdown(wait=True)
