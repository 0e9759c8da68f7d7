"""Embedded and Redis stores: conversation state, inbox (dedupe), locks, ordering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    SessionStarted,
    SlotSet,
    UserUttered,
)

from nlu.tracker_store import SQLiteTrackerStore
from runtime.coordination import InProcessLocks, RedisInbox, RedisLocks, SQLiteInbox
from runtime.dispatch import Dispatcher
from runtime.messages import InboundMessage, Location, MediaRef
from runtime.sqlite import SQLite
from tests.conftest import ServerFactory, base_env, post_twilio, whatsapp_form
from tests.fakes.twilio_api import FakeTwilioAPI

DOMAIN = Domain.from_yaml("""
version: "3.1"
slots:
  order_number:
    type: text
    mappings: [{type: custom}]
""")


def _msg(mid: str, conv: str = "+34600111222", **kw: object) -> InboundMessage:
    return InboundMessage(channel="twilio", conversation_id=conv, message_id=mid, **kw)  # type: ignore[arg-type]


async def test_sqlite_tracker_store_appends_and_survives_reopen(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "t.sqlite3")
    store = SQLiteTrackerStore(db, DOMAIN)
    await store.setup()
    assert await store.retrieve("u1") is None
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("hi", {"name": "greet", "confidence": 1.0}))
    tracker.update(SlotSet("order_number", "AB12345"))
    await store.save(tracker)
    tracker.update(BotUttered("hello"))
    await store.save(tracker)
    await store.save(tracker)  # saving again adds nothing
    count = await db.fetchone("SELECT COUNT(*) FROM events WHERE sender_id = 'u1'")
    assert count == (len(tracker.events),)
    await db.close()

    db2 = SQLite(tmp_path / "t.sqlite3")  # a restart: a new connection to the file
    store2 = SQLiteTrackerStore(db2, DOMAIN)
    again = await store2.retrieve("u1")
    assert again is not None
    assert [e.as_dict()["event"] for e in again.events] == [
        e.as_dict()["event"] for e in tracker.events
    ]
    assert again.get_slot("order_number") == "AB12345"
    assert list(await store2.keys()) == ["u1"]
    assert await store2.exists("u1") and not await store2.exists("u2")
    await db2.close()


async def test_sqlite_tracker_store_returns_latest_session(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "t.sqlite3")
    store = SQLiteTrackerStore(db, DOMAIN)
    await store.setup()
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("old session"))
    await store.save(tracker)
    tracker.update(ActionExecuted("action_session_start"))
    tracker.update(SessionStarted())
    tracker.update(UserUttered("new session"))
    await store.save(tracker)
    latest = await store.retrieve("u1")
    assert latest is not None
    texts = [e.text for e in latest.events if isinstance(e, UserUttered)]
    assert texts == ["new session"]
    latest.update(BotUttered("reply"))
    await store.save(latest)  # a sliced tracker appends only its new event
    full = await store.retrieve_full_tracker("u1")
    assert full is not None
    assert [e.text for e in full.events if isinstance(e, UserUttered)] == [
        "old session",
        "new session",
    ]
    assert sum(isinstance(e, BotUttered) for e in full.events) == 1
    await db.close()


async def test_sqlite_inbox_dedupes_and_keeps_unfinished(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "i.sqlite3")
    inbox = SQLiteInbox(db, ttl_s=3600)
    await inbox.setup()
    rich = _msg(
        "SM1",
        text="hola",
        media=(MediaRef("https://x/y", "audio/ogg"),),
        location=Location(1.5, 2.5, "addr"),
    )
    assert await inbox.accept(rich)
    assert not await inbox.accept(rich)  # redelivery
    assert await inbox.accept(_msg("SM2"))
    assert await inbox.accept(InboundMessage(channel="rest", conversation_id="x"))  # no id
    pending = await inbox.pending()
    assert [m.message_id for m in pending] == ["SM1", "SM2"]
    assert pending[0] == rich  # the whole message survives, media and location included
    await inbox.done(pending[0])
    assert [m.message_id for m in await inbox.pending()] == ["SM2"]
    assert not await inbox.accept(rich)  # still a duplicate once done
    await db.close()


async def test_in_process_lock_serialises_one_conversation() -> None:
    locks = InProcessLocks()
    inside: list[str] = []
    overlap = []

    async def turn(conv: str, tag: str) -> None:
        async with locks.lock(conv):
            overlap.append(len([t for t in inside if t.startswith(conv)]))
            inside.append(f"{conv}:{tag}")
            await asyncio.sleep(0.01)
            inside.remove(f"{conv}:{tag}")

    await asyncio.gather(*(turn("a", str(i)) for i in range(5)), turn("b", "0"))
    assert overlap == [0] * 6
    assert locks._locks == {}  # nothing left behind


async def test_dispatcher_keeps_order_per_conversation() -> None:
    dispatcher = Dispatcher()
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def job(conv: str, i: int, delay: float) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await asyncio.sleep(delay)
            seen[conv].append(i)

        return run

    for i in range(10):
        dispatcher.submit("a", job("a", i, 0.005 * (10 - i)))  # later jobs are faster
        dispatcher.submit("b", job("b", i, 0.001))
    assert await dispatcher.wait_idle(10)
    assert seen == {"a": list(range(10)), "b": list(range(10))}


async def test_redis_lock_excludes_across_clients(redis_url: str) -> None:
    c1, c2 = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    locks1, locks2 = RedisLocks(c1, prefix="t-lock"), RedisLocks(c2, prefix="t-lock")
    events: list[str] = []

    async def hold(locks: RedisLocks, name: str) -> None:
        async with locks.lock("+34600111222"):
            events.append(f"{name}-in")
            await asyncio.sleep(0.05)
            events.append(f"{name}-out")

    await asyncio.gather(hold(locks1, "one"), hold(locks2, "two"))
    assert events in (
        ["one-in", "one-out", "two-in", "two-out"],
        ["two-in", "two-out", "one-in", "one-out"],
    )
    assert await c1.keys("t-lock:*") == []  # released
    await c1.close()
    await c2.close()


async def test_redis_inbox_dedupes_across_clients(redis_url: str) -> None:
    c1, c2 = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    a, b = RedisInbox(c1, ttl_s=60, prefix="t-inbox"), RedisInbox(c2, ttl_s=60, prefix="t-inbox")
    msg = _msg("SMredis1", text="hi")
    results = await asyncio.gather(a.accept(msg), b.accept(msg))
    assert sorted(results) == [False, True]  # exactly one instance takes it
    assert [m.message_id for m in await b.pending()] == ["SMredis1"]
    assert await a.pending(older_than_s=3600) == []  # fresh: another worker may own it
    await b.done(msg)
    assert await a.pending() == []
    ttl = await c1.ttl("t-inbox:seen:twilio:SMredis1")
    assert 0 < ttl <= 60
    await a.close()
    await b.close()


async def test_two_instances_sharing_redis_process_a_redelivery_once(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, redis_url: str, tmp_path: Path
) -> None:
    """Twilio retries a webhook on another worker: only one of them runs the turn."""
    env = base_env(tmp_path / "shared", twilio_api.url) | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3",
    }
    client_a, runtime_a = await make_server(env=env, data_dir=tmp_path / "shared")
    client_b, runtime_b = await make_server(env=env, data_dir=tmp_path / "shared")
    form = whatsapp_form("when are you open?", "+447700900123")
    statuses = await asyncio.gather(
        post_twilio(client_a, form), post_twilio(client_b, form), post_twilio(client_a, form)
    )
    assert [r.status for r in statuses] == [200, 200, 200]
    assert await runtime_a.dispatcher.wait_idle(60) and await runtime_b.dispatcher.wait_idle(60)
    assert len(twilio_api.sent) == 1 and "Monday" in twilio_api.sent[0].body
    # and the two instances serialise one conversation's turns through the Redis lock
    forms = [whatsapp_form(t, "+447700900123") for t in ("where is my order", "AB12345")]
    await post_twilio(client_a, forms[0])
    await post_twilio(client_b, forms[1])
    assert await runtime_a.dispatcher.wait_idle(60) and await runtime_b.dispatcher.wait_idle(60)
    bodies = [m.body for m in twilio_api.sent[1:]]
    assert "order number" in bodies[0].lower() and "shipped" in bodies[1].lower()
    await aioredis.from_url(env["HABLA_REDIS_URL"]).flushdb()


async def test_tracker_cache_serves_hot_conversations_and_notices_other_writers(
    tmp_path: Path,
) -> None:
    db = SQLite(tmp_path / "t.sqlite3")
    store = SQLiteTrackerStore(db, DOMAIN, cache_size=10)
    await store.setup()
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("hi"))
    await store.save(tracker)
    hot = await store.retrieve("u1")
    assert id(hot) == id(tracker)  # hot: the same object, no deserialisation

    # a turn that changed the tracker but failed before saving: reload from the table
    tracker.update(BotUttered("never saved"))
    fresh = await store.retrieve("u1")
    assert fresh is not tracker and fresh is not None
    assert not any(isinstance(e, BotUttered) for e in fresh.events)

    # another process (its own connection and cache) appends: the stale copy is dropped
    other_db = SQLite(tmp_path / "t.sqlite3")
    other = SQLiteTrackerStore(other_db, DOMAIN, cache_size=10)
    theirs = await other.retrieve("u1")
    assert theirs is not None
    theirs.update(SlotSet("order_number", "XY98765"))
    await other.save(theirs)
    ours = await store.retrieve("u1")
    assert ours is not None and ours.get_slot("order_number") == "XY98765"
    ours.update(BotUttered("after"))
    await store.save(ours)
    rows = await db.fetchall("SELECT type_name FROM events WHERE sender_id = 'u1' ORDER BY seq")
    assert [r[0] for r in rows][-3:] == ["user", "slot", "bot"]
    await other_db.close()
    await db.close()
