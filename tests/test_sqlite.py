"""The SQLite bridge (runtime/sqlite.py): calls made at once run as batches on the
database thread, a batch's writes in one transaction with a savepoint each. What a
caller sees must be what it saw when every call had its own transaction: its write
committed when it resumes, its own error only, reads after the writes queued before
them. A second connection (another process's view) checks what is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.sqlite import SQLite


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLite]:
    db = SQLite(tmp_path / "bridge.sqlite3")
    await db.script("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    yield db
    await db.close()


def committed(db: SQLite) -> dict[str, int]:
    """The rows another connection sees."""
    with sqlite3.connect(db.path) as other:
        return dict(other.execute("SELECT k, v FROM t").fetchall())


async def test_concurrent_writes_share_batches_and_each_is_committed_when_awaited(
    db: SQLite,
) -> None:
    async def write(i: int) -> dict[str, int]:
        await db.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i))
        return committed(db)  # right after its own await

    seen = await asyncio.gather(*(write(i) for i in range(40)))
    assert all(f"k{i}" in rows for i, rows in enumerate(seen))
    assert committed(db) == {f"k{i}": i for i in range(40)}
    assert db.batches < 40  # calls waiting together ran together


async def test_a_failing_write_rolls_back_only_its_own_statements(db: SQLite) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('bad-1', 1)")
        conn.execute("INSERT INTO t VALUES ('bad-2', NULL)")  # NOT NULL: fails

    results = await asyncio.gather(
        db.execute("INSERT INTO t VALUES ('a', 1)"),
        db.run(half_then_fail),
        db.execute("INSERT INTO t VALUES ('b', 2)"),
        db.execute("INSERT INTO t VALUES ('a', 3)"),  # duplicate key: fails
        db.execute("UPDATE t SET v = v + 10 WHERE k = 'a'"),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 1 and results[4] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert isinstance(results[3], sqlite3.IntegrityError)
    assert committed(db) == {"a": 11, "b": 2}


async def test_reads_see_the_writes_queued_before_them(db: SQLite) -> None:
    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])

    results = await asyncio.gather(
        db.execute("INSERT INTO t VALUES ('x', 1)"),
        db.fetchone("SELECT v FROM t WHERE k = 'x'"),
        db.read(count),
        db.execute("INSERT INTO t VALUES ('y', 2)"),
        db.read(count),
        db.script("CREATE TABLE IF NOT EXISTS u (k TEXT)"),  # commits what is open first
        db.fetchall("SELECT k FROM t ORDER BY k"),
    )
    assert results[1] == (1,) and results[2] == 1 and results[4] == 2
    assert results[6] == [("x",), ("y",)]
    assert committed(db) == {"x": 1, "y": 2}


async def test_a_caller_that_gives_up_leaves_the_others_answered(db: SQLite) -> None:
    gone = asyncio.ensure_future(db.execute("INSERT INTO t VALUES ('gone', 1)"))
    kept = asyncio.ensure_future(db.execute("INSERT INTO t VALUES ('kept', 2)"))
    gone.cancel()
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await db.fetchone("SELECT v FROM t WHERE k = 'kept'") == (2,)


async def test_a_call_after_close_fails_at_once(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "closed.sqlite3")
    await db.script("CREATE TABLE t (k TEXT)")
    await db.close()
    for _ in range(2):  # (and again: nothing is left waiting for a thread that is gone)
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(db.fetchall("SELECT * FROM t"), 5)
