"""The outbox: CRM and payment writes that must happen, even when a provider is down.

A write is stored first (idempotent by a key habla chooses, e.g. ``crm.order:<order>``),
then tried at once. A transient failure (429, 5xx, timeout, connection refused) is
retried with exponential backoff until it succeeds or reaches the attempt limit; then,
like a permanent failure, it is recorded as ``failed`` with its last error, visible to
the operator (``GET /api/outbox``). Every handler is idempotent (the CRM adapters
upsert by a reference, Stripe gets an idempotency key), so a retry after a timeout
that did reach the provider creates nothing twice.

Jobs live in the embedded SQLite file, shared by every process on the machine, or in
MongoDB, shared by every server (``HABLA_ORDER_STORE=mongo``: the commerce state lives
together). Server processes run the retry loop; the action code in any process may add
jobs and try them once. A lease stops two processes running one job at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import metrics
from runtime.errors import HablaError
from runtime.retry import backoff_delay
from runtime.sqlite import SQLite

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at REAL NOT NULL,
    lease_until REAL NOT NULL,
    last_error TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at);
"""

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
COLUMNS = (
    "id, key, kind, payload, conversation_id, status, attempts, next_at, last_error, "
    "result, created_at, updated_at"
)


@dataclass
class Job:
    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    conversation_id: str
    status: str  # pending | done | failed
    attempts: int
    next_at: float
    last_error: str
    result: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        return cls(
            id=row[0],
            key=row[1],
            kind=row[2],
            payload=json.loads(row[3]),
            conversation_id=row[4],
            status=row[5],
            attempts=row[6],
            next_at=row[7],
            last_error=row[8],
            result=json.loads(row[9]),
            created_at=row[10],
            updated_at=row[11],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "last_error": self.last_error,
            "result": self.result,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class JobStore(ABC):
    """Where the outbox keeps its jobs: SQLite (one machine) or MongoDB (shared by every
    server). Every method is one atomic write or read; jobs are addressed by key."""

    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def insert(
        self, kind: str, payload: dict[str, Any], key: str, conversation_id: str, next_at: float
    ) -> Job:
        """Store a pending job unless one has the key; the stored job either way."""

    @abstractmethod
    async def claim(self, key: str, lease_until: float, now: float, due_only: bool) -> bool:
        """Lease a pending job nobody holds (and, with ``due_only``, that is due)."""

    @abstractmethod
    async def retry(self, key: str, attempts: int, next_at: float, error: str) -> None:
        """A transient failure: due again at ``next_at``, lease released."""

    @abstractmethod
    async def finish(
        self, key: str, status: str, attempts: int, error: str, result: dict[str, Any]
    ) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> Job | None: ...

    @abstractmethod
    async def jobs(self, status: str = "", limit: int = 100) -> list[Job]:
        """The latest jobs first (``status``: only those)."""

    @abstractmethod
    async def due(self, now: float, limit: int = 50) -> list[Job]:
        """Pending jobs that are due and not leased, soonest first."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """How many jobs there are in each status (``habla_outbox_jobs``)."""

    async def close(self) -> None:
        return None


class SQLiteJobs(JobStore):
    def __init__(self, db: SQLite) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    async def insert(
        self, kind: str, payload: dict[str, Any], key: str, conversation_id: str, next_at: float
    ) -> Job:
        now = time.time()

        def insert(conn: sqlite3.Connection) -> tuple[Any, ...]:
            conn.execute(
                "INSERT OR IGNORE INTO outbox (key, kind, payload, conversation_id, status, "
                "attempts, next_at, lease_until, last_error, result, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', 0, ?, 0, '', '{}', ?, ?)",
                (key, kind, json.dumps(payload), conversation_id, next_at, now, now),
            )
            row = conn.execute(f"SELECT {COLUMNS} FROM outbox WHERE key = ?", (key,)).fetchone()
            return tuple(row)

        return Job.from_row(await self.db.run(insert))

    async def claim(self, key: str, lease_until: float, now: float, due_only: bool) -> bool:
        due = "AND next_at <= ?" if due_only else ""
        params: tuple[Any, ...] = (lease_until, key, now) + ((now,) if due_only else ())
        changed = await self.db.execute(
            "UPDATE outbox SET lease_until = ? WHERE key = ? AND status = 'pending' "
            f"AND lease_until < ? {due}",
            params,
        )
        return changed == 1

    async def retry(self, key: str, attempts: int, next_at: float, error: str) -> None:
        await self.db.execute(
            "UPDATE outbox SET attempts = ?, next_at = ?, lease_until = 0, "
            "last_error = ?, updated_at = ? WHERE key = ?",
            (attempts, next_at, error, time.time(), key),
        )

    async def finish(
        self, key: str, status: str, attempts: int, error: str, result: dict[str, Any]
    ) -> None:
        await self.db.execute(
            "UPDATE outbox SET status = ?, attempts = ?, lease_until = 0, last_error = ?, "
            "result = ?, updated_at = ? WHERE key = ?",
            (status, attempts, error, json.dumps(result), time.time(), key),
        )

    async def get(self, key: str) -> Job | None:
        row = await self.db.fetchone(f"SELECT {COLUMNS} FROM outbox WHERE key = ?", (key,))
        return Job.from_row(row) if row else None

    async def jobs(self, status: str = "", limit: int = 100) -> list[Job]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = await self.db.fetchall(
            f"SELECT {COLUMNS} FROM outbox {where} ORDER BY id DESC LIMIT {int(limit)}", params
        )
        return [Job.from_row(r) for r in rows]

    async def due(self, now: float, limit: int = 50) -> list[Job]:
        rows = await self.db.fetchall(
            f"SELECT {COLUMNS} FROM outbox WHERE status = 'pending' AND next_at <= ? "
            f"AND lease_until < ? ORDER BY next_at LIMIT {int(limit)}",
            (now, now),
        )
        return [Job.from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        return {str(r[0]): int(r[1]) for r in rows}


class MongoJobs(JobStore):
    """Jobs in MongoDB (``outbox``, unique ``key``), shared by every server: any server's
    retry loop takes a due job, and a lease (``find_one_and_update`` on an unleased
    pending job) lets only one run it at a time. ``database``: a motor database."""

    FIELDS = {"_id": False, "lease_until": False}

    def __init__(self, database: Any) -> None:
        self.database = database
        self.outbox = database["outbox"]

    async def setup(self) -> None:
        await self.outbox.create_index("key", unique=True, name="key_unique")
        await self.outbox.create_index([("status", 1), ("next_at", 1)], name="due")

    async def close(self) -> None:
        self.database.client.close()

    async def insert(
        self, kind: str, payload: dict[str, Any], key: str, conversation_id: str, next_at: float
    ) -> Job:
        now = time.time()
        doc = {
            "id": 0,
            "key": key,
            "kind": kind,
            "payload": payload,
            "conversation_id": conversation_id,
            "status": "pending",
            "attempts": 0,
            "next_at": next_at,
            "lease_until": 0.0,
            "last_error": "",
            "result": {},
            "created_at": now,
            "updated_at": now,
        }
        await self.outbox.update_one({"key": key}, {"$setOnInsert": doc}, upsert=True)
        job = await self.get(key)
        assert job is not None
        return job

    async def claim(self, key: str, lease_until: float, now: float, due_only: bool) -> bool:
        query: dict[str, Any] = {"key": key, "status": "pending", "lease_until": {"$lt": now}}
        if due_only:
            query["next_at"] = {"$lte": now}
        doc = await self.outbox.find_one_and_update(
            query, {"$set": {"lease_until": lease_until}}, {"_id": True}
        )
        return doc is not None

    async def retry(self, key: str, attempts: int, next_at: float, error: str) -> None:
        update = {
            "attempts": attempts,
            "next_at": next_at,
            "lease_until": 0.0,
            "last_error": error,
            "updated_at": time.time(),
        }
        await self.outbox.update_one({"key": key}, {"$set": update})

    async def finish(
        self, key: str, status: str, attempts: int, error: str, result: dict[str, Any]
    ) -> None:
        update = {
            "status": status,
            "attempts": attempts,
            "lease_until": 0.0,
            "last_error": error,
            "result": result,
            "updated_at": time.time(),
        }
        await self.outbox.update_one({"key": key}, {"$set": update})

    async def get(self, key: str) -> Job | None:
        doc = await self.outbox.find_one({"key": key}, self.FIELDS)
        return Job(**doc) if doc else None

    async def jobs(self, status: str = "", limit: int = 100) -> list[Job]:
        query = {"status": status} if status else {}
        cursor = self.outbox.find(query, self.FIELDS).sort("created_at", -1).limit(int(limit))
        return [Job(**doc) async for doc in cursor]

    async def due(self, now: float, limit: int = 50) -> list[Job]:
        query = {"status": "pending", "next_at": {"$lte": now}, "lease_until": {"$lt": now}}
        cursor = self.outbox.find(query, self.FIELDS).sort("next_at", 1).limit(int(limit))
        return [Job(**doc) async for doc in cursor]

    async def counts(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {str(d["_id"]): int(d["n"]) async for d in self.outbox.aggregate(pipeline)}


class Outbox:
    def __init__(
        self,
        store: SQLite | JobStore,
        *,
        max_attempts: int,
        backoff_s: float,
        max_delay_s: float = 600.0,
        lease_s: float = 120.0,
        poll_s: float = 1.0,
    ) -> None:
        self.store = SQLiteJobs(store) if isinstance(store, SQLite) else store
        self.handlers: dict[str, Handler] = {}
        self.max_attempts, self.backoff_s, self.max_delay_s = max_attempts, backoff_s, max_delay_s
        self.lease_s, self.poll_s = lease_s, poll_s
        self.providers: dict[str, str] = {}
        """The provider a family's jobs go to when the job does not name one ("crm" →
        "hubspot"): the label of ``habla_provider_retries_total``."""
        self.on_settled: Callable[[Job], Awaitable[None]] | None = None
        """Called for jobs the retry loop finished (done or failed): tell the user."""
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def setup(self) -> None:
        await self.store.setup()

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        key: str,
        conversation_id: str = "",
        delay_s: float = 0.0,
    ) -> Job:
        """Store a job (once per key), due in ``delay_s``; the stored job."""
        if kind not in self.handlers:
            raise KeyError(f"no outbox handler for '{kind}'")
        job = await self.store.insert(kind, payload, key, conversation_id, time.time() + delay_s)
        if not delay_s:
            self._wake.set()
        return job

    async def submit(
        self, kind: str, payload: dict[str, Any], key: str, conversation_id: str = ""
    ) -> Job:
        """Store the job and try it once now (unless already done): the job after that.

        The retry loop leaves it alone for a grace period, so the caller (an action) is
        the one that reports this first attempt; if the process dies, the loop takes over.
        """
        job = await self.enqueue(kind, payload, key, conversation_id, delay_s=self.lease_s)
        if job.status == "pending":
            job = await self.run_job(job, inline=True)
        return job

    async def run_job(self, job: Job, inline: bool = False) -> Job:
        """One attempt (if the job can be claimed); the job as stored afterwards."""
        now = time.time()
        if not await self.store.claim(job.key, now + self.lease_s, now, due_only=not inline):
            return await self.get(job.key) or job
        handler = self.handlers[job.kind]
        attempts = job.attempts + 1
        now = time.time()
        try:
            result = await handler(job.payload)
        except HablaError as e:
            if not e.transient:
                await self.store.finish(job.key, "failed", attempts, str(e), {})
            elif attempts >= self.max_attempts:
                await self.store.finish(job.key, "failed", attempts, f"gave up: {e}", {})
            else:
                delay = backoff_delay(attempts, self.backoff_s, self.max_delay_s, e.retry_after)
                await self.store.retry(job.key, attempts, now + delay, str(e))
                family = job.kind.partition(".")[0]
                provider = job.payload.get("provider") or self.providers.get(family, "")
                metrics.retried(family, str(provider))
                logger.info(
                    "outbox: %s %s failed (%s); attempt %d of %d in %.1f s",
                    job.kind,
                    job.key,
                    e,
                    attempts,
                    self.max_attempts,
                    delay,
                )
        except Exception as e:  # a bug in a handler: record it, never lose the job silently
            logger.exception("outbox: %s %s raised", job.kind, job.key)
            await self.store.finish(job.key, "failed", attempts, f"{type(e).__name__}: {e}", {})
        else:
            await self.store.finish(job.key, "done", attempts, "", result)
        stored = await self.get(job.key)
        assert stored is not None
        if stored.status == "failed":
            logger.error(
                "outbox: %s %s failed for good after %d attempts: %s",
                job.kind,
                job.key,
                stored.attempts,
                stored.last_error,
            )
        if not inline and stored.status != "pending" and self.on_settled is not None:
            try:
                await self.on_settled(stored)
            except Exception:
                logger.exception("outbox: settling %s failed", job.key)
        return stored

    async def get(self, key: str) -> Job | None:
        return await self.store.get(key)

    async def jobs(self, status: str = "", limit: int = 100) -> list[Job]:
        return await self.store.jobs(status, limit)

    async def counts(self) -> dict[str, int]:
        """Jobs by status (pending, done, failed)."""
        return await self.store.counts()

    async def run_due(self) -> int:
        """Attempt every job that is due; how many were attempted."""
        jobs = await self.store.due(time.time())
        for job in jobs:
            await self.run_job(job)
        return len(jobs)

    async def start(self) -> None:
        """Run the retry loop in the background (the server process only)."""

        async def loop() -> None:
            while True:
                try:
                    await self.run_due()
                except Exception:
                    logger.exception("outbox: retry loop error")
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

        self._loop_task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.store.close()
