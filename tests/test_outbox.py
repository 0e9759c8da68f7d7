"""The outbox: writes are stored, retried with backoff on transient errors, recorded as
failed after the limit or on a permanent error, and never run twice at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from commerce.outbox import Job, MongoJobs, Outbox, SQLiteJobs
from runtime.retry import PermanentError, TransientError
from runtime.sqlite import SQLite


class Flaky:
    """A handler that fails transiently ``failures`` times, then succeeds."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.error = failures, error
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(payload)
        if len(self.calls) <= self.failures:
            raise self.error or TransientError("503 from provider")
        return {"id": f"rec-{payload['n']}"}


class Backend:
    """Outboxes on one store (the SQLite file, or a MongoDB database on the test
    server); each ``open`` is a new connection, as a restarted or second server has."""

    def __init__(self, tmp_path: Path, mongo_url: str) -> None:
        self.tmp_path, self.mongo_url = tmp_path, mongo_url
        self.database = f"habla_test_{uuid.uuid4().hex[:12]}"
        self.opened: list[Outbox] = []

    async def open(self, **kwargs: Any) -> Outbox:
        store: Any
        if self.mongo_url:
            store = MongoJobs(AsyncIOMotorClient(self.mongo_url)[self.database])
        else:
            store = SQLiteJobs(SQLite(self.tmp_path / "habla.sqlite3"))
        outbox = Outbox(store, max_attempts=kwargs.pop("max_attempts", 5), backoff_s=0.01, **kwargs)
        await outbox.setup()
        self.opened.append(outbox)
        return outbox

    async def make_due(self) -> None:
        """The grace period or backoff is over (as if time had passed)."""
        store = self.opened[-1].store
        if isinstance(store, MongoJobs):
            await store.outbox.update_many({}, {"$set": {"next_at": 0}})
        else:
            assert isinstance(store, SQLiteJobs)
            await store.db.execute("UPDATE outbox SET next_at = 0")

    async def crash(self, outbox: Outbox) -> None:
        """The process dies: its connection goes, nothing else happens."""
        store = outbox.store
        if isinstance(store, MongoJobs):
            await store.close()
        else:
            assert isinstance(store, SQLiteJobs)
            await store.db.close()
        self.opened.remove(outbox)


@pytest.fixture(params=["sqlite", "mongo"])
def mongo(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("mongo_url")) if request.param == "mongo" else ""


@pytest.fixture
async def backend(mongo: str, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(tmp_path, mongo)
    yield b
    for outbox in list(b.opened):
        await outbox.close()
        if isinstance(outbox.store, SQLiteJobs):
            await outbox.store.db.close()


async def test_transient_failures_are_retried_until_done(backend: Backend) -> None:
    outbox = await backend.open(poll_s=0.01)
    handler = Flaky(3)
    outbox.register("crm.contact", handler)
    settled: list[Job] = []
    told = asyncio.Event()

    async def on_settled(job: Job) -> None:
        settled.append(job)
        told.set()

    outbox.on_settled = on_settled
    job = await outbox.submit("crm.contact", {"n": 1}, "contact:1", "+34600111222")
    assert job.status == "pending" and job.attempts == 1 and "503" in job.last_error
    # the grace period keeps the loop off a job its caller just tried: make it due
    await backend.make_due()
    await outbox.start()
    await asyncio.wait_for(told.wait(), 30)  # the loop settled it and told the caller
    stored = await outbox.get("contact:1")
    await outbox.close()
    assert stored is not None
    assert stored.status == "done" and stored.attempts == 4
    assert stored.result == {"id": "rec-1"}
    assert len(handler.calls) == 4
    assert [j.key for j in settled] == ["contact:1"]  # the loop finished it: caller told


async def test_same_key_is_one_job(backend: Backend) -> None:
    outbox = await backend.open()
    handler = Flaky(0)
    outbox.register("crm.contact", handler)
    first = await outbox.submit("crm.contact", {"n": 1}, "contact:1")
    again = await outbox.submit("crm.contact", {"n": 2}, "contact:1")
    assert first.status == again.status == "done"
    assert again.payload == {"n": 1} and len(handler.calls) == 1
    assert len(await outbox.jobs()) == 1


async def test_gives_up_after_the_limit_and_is_visible(backend: Backend) -> None:
    outbox = await backend.open(max_attempts=3)
    outbox.register("crm.deal", Flaky(99))
    job = await outbox.enqueue("crm.deal", {"n": 7}, "deal:7")
    for _ in range(3):
        await backend.make_due()
        job = await outbox.run_job(job)
    assert job.status == "failed" and job.attempts == 3
    assert job.last_error.startswith("gave up")
    failed = await outbox.jobs("failed")
    assert [j.key for j in failed] == ["deal:7"]
    assert await outbox.run_due() == 0  # failed jobs are not retried


async def test_permanent_error_is_not_retried(backend: Backend) -> None:
    outbox = await backend.open()
    handler = Flaky(1, PermanentError("401 bad token"))
    outbox.register("crm.contact", handler)
    job = await outbox.submit("crm.contact", {"n": 1}, "contact:1")
    assert job.status == "failed" and job.attempts == 1 and "401" in job.last_error
    assert len(handler.calls) == 1


async def test_a_leased_job_is_not_run_twice(backend: Backend) -> None:
    outbox = await backend.open()
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return {}

    outbox.register("payments.checkout", slow)
    job = await outbox.enqueue("payments.checkout", {}, "checkout:1")
    first = asyncio.create_task(outbox.run_job(job))
    await started.wait()
    other = await backend.open()  # another server, its own connection
    other.register("payments.checkout", slow)
    second = await other.run_job(job)  # finds it leased
    assert second.status == "pending" and calls == 1
    release.set()
    assert (await first).status == "done"


async def test_jobs_survive_a_restart(backend: Backend) -> None:
    outbox = await backend.open()
    outbox.register("crm.note", Flaky(0))
    await outbox.enqueue("crm.note", {"n": 3}, "note:3")
    await backend.crash(outbox)  # the process dies before the loop ran it

    outbox = await backend.open()
    handler = Flaky(0)
    outbox.register("crm.note", handler)
    assert await outbox.run_due() == 1
    stored = await outbox.get("note:3")
    assert stored is not None and stored.status == "done" and handler.calls == [{"n": 3}]
