"""SQLite off the event loop: one connection owned by one worker thread.

Every embedded store (conversation state, inbox, deliveries) shares one file and one
connection. Calls are serialised on the thread, so there are no locking surprises,
and the event loop only awaits futures.

The statements themselves are cheap (a write and its commit about 30 µs here, a read
6 µs); what cost was the hop: a ``run_in_executor`` future per call, chained to an
asyncio future, and a wake-up of each side, 100-190 µs of CPU per call, and a turn makes
about eleven. So calls queue up and the database thread takes every call waiting when
it wakes (a *batch*), hands all their results back in one callback, and runs a batch's
writes in one transaction: each write in a savepoint of its own (a failing one rolls
back only its own statements, and its caller gets its error), committed before any of
their callers resumes, as when each had its own transaction. Reads see the writes
queued before them. If the commit fails, every call of that transaction fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


WAL_ATTEMPTS = 100
WRITE, READ, PLAIN, ALONE = range(4)
"""How a call runs: in the batch's write transaction (its own savepoint), in a read
transaction (or the batch's transaction, if one is open), as is, or alone (scripts,
which commit what is open, and closing)."""


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


class _Call:
    __slots__ = ("fn", "kind", "future", "ok", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], kind: int, future: Any) -> None:
        self.fn, self.kind, self.future = fn, kind, future
        self.ok: bool = False
        self.result: Any = None


class SQLite:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[_Call] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self.batches = 0  # batches the database thread ran (tests, benchmarks)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    async def _call(self, kind: int, fn: Callable[[sqlite3.Connection], T]) -> T:
        call = _Call(fn, kind, asyncio.get_running_loop().create_future())
        with self._lock:
            self._queue.append(call)
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._executor.submit(self._drain)
            except BaseException:  # (closed: its executor takes no more work)
                with self._lock:
                    self._queue.remove(call)
                    self._draining = bool(self._queue)
                raise
        result: T = await call.future
        return result

    def _drain(self) -> None:
        """On the database thread: batches until the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._run_batch(batch)
            except BaseException as e:  # (SQLite failing to end a transaction)
                _fail(batch, e)  # conservative: its callers try again
                self._rollback()
            self.batches += 1
            loops: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
            for call in batch:
                loops.setdefault(call.future.get_loop(), []).append(call)
            for loop, calls in loops.items():
                try:
                    loop.call_soon_threadsafe(_settle, calls)
                except RuntimeError:  # its loop closed meanwhile: nobody waits for these
                    pass

    def _rollback(self) -> None:
        try:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _run_batch(self, batch: list[_Call]) -> None:
        try:
            conn = self._connect()
        except BaseException as e:
            for call in batch:
                call.ok, call.result = False, e
            return
        in_transaction: list[_Call] = []  # calls whose results depend on its commit
        open_ = False
        for call in batch:
            if call.kind == ALONE or (call.kind == WRITE and not open_):
                if open_:
                    open_ = self._commit(conn, in_transaction)
                if call.kind == WRITE:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        open_ = True
                    except BaseException as e:
                        call.ok, call.result = False, e
                        continue
            if call.kind == WRITE:
                open_ = self._write(conn, call, in_transaction)
            elif call.kind == READ and not open_:
                self._read(conn, call)
            else:
                _apply(call, conn)
                if open_:
                    in_transaction.append(call)
        if open_:
            self._commit(conn, in_transaction)

    @staticmethod
    def _write(conn: sqlite3.Connection, call: _Call, in_transaction: list[_Call]) -> bool:
        """One write in its own savepoint; whether the transaction is still open."""
        conn.execute("SAVEPOINT habla_call")
        if _apply(call, conn):
            conn.execute("RELEASE habla_call")
            in_transaction.append(call)
            return True
        try:
            conn.execute("ROLLBACK TO habla_call")
            conn.execute("RELEASE habla_call")
            return True
        except sqlite3.Error as e:  # SQLite rolled the whole transaction back itself
            _fail(in_transaction, e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False

    @staticmethod
    def _read(conn: sqlite3.Connection, call: _Call) -> None:
        try:
            conn.execute("BEGIN DEFERRED")
        except BaseException as e:
            call.ok, call.result = False, e
            return
        _apply(call, conn)
        try:
            conn.execute("COMMIT")
        except BaseException as e:
            call.ok, call.result = False, e

    @staticmethod
    def _commit(conn: sqlite3.Connection, in_transaction: list[_Call]) -> bool:
        """Commit the open transaction (False: it is closed either way)."""
        try:
            conn.execute("COMMIT")
        except BaseException as e:
            _fail(in_transaction, e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        in_transaction.clear()
        return False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread inside one transaction (its
        own savepoint in its batch's transaction): committed when this returns."""
        return await self._call(WRITE, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread in a read transaction: one
        consistent snapshot that takes no write lock (WAL: writers go on meanwhile)."""
        return await self._call(READ, fn)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        args = tuple(params)
        return await self.run(lambda c: c.execute(sql, args).rowcount)

    async def script(self, sql: str) -> None:
        await self._call(ALONE, lambda c: c.executescript(sql))

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        args = tuple(params)
        return await self._call(PLAIN, lambda c: c.execute(sql, args).fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None or self._draining:  # (calls still queued may connect)
            await self._call(ALONE, close)
        self._executor.shutdown(wait=True)


def _apply(call: _Call, conn: sqlite3.Connection) -> bool:
    try:
        call.ok, call.result = True, call.fn(conn)
    except BaseException as e:
        call.ok, call.result = False, e
    return call.ok


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        call.ok, call.result = False, error


def _settle(batch: list[_Call]) -> None:
    """On the event loop: every call's result or error to its awaiting caller."""
    for call in batch:
        if call.future.done():  # (cancelled: its statements ran all the same)
            continue
        if call.ok:
            call.future.set_result(call.result)
        else:
            call.future.set_exception(call.result)
