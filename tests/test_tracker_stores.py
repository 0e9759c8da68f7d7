"""Conversation state on SQLite (one machine) and MongoDB (several servers, against a
real wire-protocol server): the same contract, run on both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from motor.motor_asyncio import AsyncIOMotorClient
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    SessionStarted,
    SlotSet,
    UserUttered,
)

from nlu.mongo_tracker_store import MongoTrackerStore
from nlu.tracker_store import EVENT_BYTES, MB, SQLiteTrackerStore
from runtime.deliveries import MongoDeliveryLog, SQLiteDeliveryLog
from runtime.errors import TransientError
from runtime.messages import BotReply, Button, Delivery
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

OpenStore = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["sqlite", "mongo"])
def backend(request: pytest.FixtureRequest) -> str:
    """ "" for SQLite, else the MongoDB test server's URL."""
    return str(request.getfixturevalue("mongo_url")) if request.param == "mongo" else ""


@pytest.fixture
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores on one database; each call is a new connection and cache, as a
    restarted server or a second server would have."""
    database = f"habla_test_{uuid.uuid4().hex[:12]}"
    url = backend
    opened: list[Any] = []

    async def open_(cache_size: int = 0, cache_bytes: int = 512 * MB) -> Any:
        store: Any
        if url:
            store = MongoTrackerStore(
                url, database, DOMAIN, cache_size=cache_size, cache_bytes=cache_bytes
            )
        else:
            db = SQLite(tmp_path / "t.sqlite3")
            store = SQLiteTrackerStore(db, DOMAIN, cache_size=cache_size, cache_bytes=cache_bytes)
        await store.setup()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        if isinstance(store, MongoTrackerStore):
            await store.close()
        else:
            await store.db.close()


async def test_events_are_appended_and_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    assert await store.retrieve("u1") is None
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("hi", {"name": "greet", "confidence": 1.0}))
    tracker.update(SlotSet("order_number", "AB12345"))
    await store.save(tracker)
    tracker.update(BotUttered("hello"))
    await store.save(tracker)
    await store.save(tracker)  # saving again adds nothing

    again = await (await open_store()).retrieve("u1")  # a restart: a new connection
    assert again is not None
    assert [e.as_dict()["event"] for e in again.events] == [
        e.as_dict()["event"] for e in tracker.events
    ]
    assert again.get_slot("order_number") == "AB12345"
    full = await store.retrieve_full_tracker("u1")
    assert len(full.events) == len(tracker.events)  # nothing stored twice
    assert list(await store.keys()) == ["u1"]
    assert await store.exists("u1") and not await store.exists("u2")


async def test_the_latest_session_is_retrieved(open_store: OpenStore) -> None:
    store = await open_store()
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("old session"))
    await store.save(tracker)
    tracker.update(ActionExecuted("action_session_start"))
    tracker.update(SessionStarted())
    tracker.update(UserUttered("new session"))
    await store.save(tracker)
    latest = await store.retrieve("u1")
    assert latest is not None
    assert [e.text for e in latest.events if isinstance(e, UserUttered)] == ["new session"]
    latest.update(BotUttered("reply"))
    await store.save(latest)  # a sliced tracker appends only its new event
    full = await store.retrieve_full_tracker("u1")
    assert full is not None
    assert [e.text for e in full.events if isinstance(e, UserUttered)] == [
        "old session",
        "new session",
    ]
    assert sum(isinstance(e, BotUttered) for e in full.events) == 1


async def test_the_cache_serves_hot_conversations_and_notices_other_writers(
    open_store: OpenStore,
) -> None:
    store = await open_store(cache_size=10)
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("hi"))
    await store.save(tracker)
    hot = await store.retrieve("u1")
    assert id(hot) == id(tracker)  # hot: the same object, no deserialisation

    # a turn that changed the tracker but failed before saving: reloaded from the store
    tracker.update(BotUttered("never saved"))
    fresh = await store.retrieve("u1")
    assert fresh is not tracker and fresh is not None
    assert not any(isinstance(e, BotUttered) for e in fresh.events)

    # another server (its own connection and cache) appends: the stale copy is dropped
    other = await open_store(cache_size=10)
    theirs = await other.retrieve("u1")
    assert theirs is not None
    theirs.update(SlotSet("order_number", "XY98765"))
    await other.save(theirs)
    ours = await store.retrieve("u1")
    assert ours is not None and ours.get_slot("order_number") == "XY98765"
    ours.update(BotUttered("after"))
    await store.save(ours)
    full = await store.retrieve_full_tracker("u1")
    assert [e.as_dict()["event"] for e in full.events][-3:] == ["user", "slot", "bot"]


async def test_the_cache_is_bounded_by_memory_as_well_as_by_count(
    open_store: OpenStore,
) -> None:
    # room for about 100 events: a long conversation pushes out the quiet ones
    store = await open_store(cache_size=10, cache_bytes=100 * EVENT_BYTES)
    trackers = {}
    for name, events in (("short1", 10), ("short2", 10), ("long", 70)):
        tracker = await store.get_or_create_tracker(name)
        for i in range(events):
            tracker.update(UserUttered(f"m{i}"))
        await store.save(tracker)
        trackers[name] = tracker
    assert await store.retrieve("short2") is trackers["short2"]
    assert await store.retrieve("long") is trackers["long"]
    assert await store.retrieve("short1") is trackers["short1"]  # all 90-odd fit
    grown = trackers["long"]
    for i in range(30):
        grown.update(UserUttered(f"more{i}"))
    await store.save(grown)  # over the budget: the least recently used leave
    assert await store.retrieve("short2") is not trackers["short2"]
    assert store._hot_events <= 100
    # a conversation bigger than the whole budget is not kept at all, and still served
    for i in range(100):
        grown.update(UserUttered(f"huge{i}"))
    await store.save(grown)
    again = await store.retrieve("long")
    assert again is not grown and again is not None
    assert len(again.events) == len(grown.events)
    assert store._hot_events <= 100


async def test_a_writer_whose_view_is_stale_is_fenced_out(open_store: OpenStore) -> None:
    """Two servers load the conversation (one's lock expired while the other took
    it): the first to save wins; the other writes nothing and is told to retry, and its
    retry, on the stored state, goes through. Nothing is interleaved or lost."""
    store, other = await open_store(), await open_store()
    tracker = await store.get_or_create_tracker("u1")
    tracker.update(UserUttered("hola"))
    await store.save(tracker)
    late, early = await store.retrieve("u1"), await other.retrieve("u1")
    assert late is not None and early is not None
    early.update(SlotSet("order_number", "AB12345"))
    await other.save(early)
    late.update(SlotSet("order_number", "XY98765"))
    with pytest.raises(TransientError, match="moved on"):
        await store.save(late)
    again = await store.retrieve("u1")
    assert again is not None and again.get_slot("order_number") == "AB12345"
    again.update(BotUttered("after"))
    await store.save(again)
    full = await store.retrieve_full_tracker("u1")
    events = [e.as_dict() for e in full.events]
    assert [e["event"] for e in events][-3:] == ["user", "slot", "bot"]
    assert [e.get("value") for e in events if e["event"] == "slot"] == ["AB12345"]


@pytest.fixture
async def delivery_log(backend: str, tmp_path: Path) -> AsyncIterator[Any]:
    if backend:
        client = AsyncIOMotorClient(backend)
        log: Any = MongoDeliveryLog(client[f"habla_test_{uuid.uuid4().hex[:12]}"])
    else:
        log = SQLiteDeliveryLog(SQLite(tmp_path / "d.sqlite3"))
    await log.setup()
    yield log
    if isinstance(log, MongoDeliveryLog):
        await log.close()
    else:
        await log.db.close()


async def test_the_delivery_log_keeps_messages_and_their_status_trails(
    delivery_log: Any,
) -> None:
    reply = BotReply("hola", buttons=(Button("Sí", "/affirm"),))
    await delivery_log.record("twilio", "+34600111222", reply, Delivery(True, "SM1"))
    await delivery_log.record(
        "twilio", "+34600111222", BotReply("adiós"), Delivery(False, error="twilio 400", attempts=1)
    )
    assert await delivery_log.status("SM1", "delivered")
    assert await delivery_log.status("SM1", "failed", "63016", "outside the window")
    assert not await delivery_log.status("SMunknown", "delivered")
    assert await delivery_log.statuses("SM1") == [
        ("delivered", "", ""),
        ("failed", "63016", "outside the window"),
    ]
    first, second = await delivery_log.history("+34600111222")
    assert (first["provider_id"], first["status"], first["error"]) == (
        "SM1",
        "failed",
        "outside the window",
    )
    assert first["body"]["buttons"] == [{"title": "Sí", "payload": "/affirm"}]
    assert [t["status"] for t in first["statuses"]] == ["delivered", "failed"]
    assert (second["status"], second["error"], second["statuses"]) == ("failed", "twilio 400", [])
    assert await delivery_log.history("+34600999999") == []


async def test_unreachable_mongo_is_a_transient_error() -> None:
    store = MongoTrackerStore(
        "mongodb://127.0.0.1:9/", "habla", DOMAIN, server_selection_timeout_s=0.2
    )
    with pytest.raises(TransientError):
        await store.setup()
    await store.close()


async def test_two_servers_share_one_conversation_on_mongo_and_redis(
    make_server: ServerFactory,
    twilio_api: FakeTwilioAPI,
    redis_url: str,
    mongo_url: str,
    tmp_path: Path,
) -> None:
    """Behind a load balancer a conversation's messages reach either server: each has
    its own data folder, and the state they share (Redis, MongoDB) carries the form."""
    env = base_env(tmp_path / "shared", twilio_api.url) | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/5",
        "HABLA_TRACKER_STORE": "mongo",
        "HABLA_MONGO_URL": mongo_url,
        "HABLA_MONGO_DATABASE": f"habla_test_{uuid.uuid4().hex[:12]}",
    }
    client_a, runtime_a = await make_server(env=env, data_dir=tmp_path / "a")
    client_b, runtime_b = await make_server(env=env, data_dir=tmp_path / "b")
    user = "+447700900126"

    async def say(client: Any, text: str) -> str:
        before = len(twilio_api.sent)
        assert (await post_twilio(client, whatsapp_form(text, user))).status == 200
        idle = await asyncio.gather(
            runtime_a.dispatcher.wait_idle(60), runtime_b.dispatcher.wait_idle(60)
        )
        assert all(idle)
        return "\n".join(m.body for m in twilio_api.sent[before:])

    assert "order number" in (await say(client_a, "where is my order?")).lower()
    assert "shipped" in (await say(client_b, "AB12345")).lower()  # B knows the form
    assert "open" in (await say(client_a, "when are you open?")).lower()
    # Twilio reports a delivery to whichever server the load balancer picks
    sid = twilio_api.to(f"whatsapp:{user}")[0].sid
    report = {"MessageSid": sid, "MessageStatus": "delivered", "To": f"whatsapp:{user}"}
    for client in (client_a, client_b):
        resp = await post_twilio(client, report, path="/webhooks/twilio/status")
        assert resp.status == 204
    assert [s[0] for s in await runtime_a.deliveries.statuses(sid)] == ["delivered"] * 2
    # (in-process, both servers share one loaded model; the state is what they share:)
    client = AsyncIOMotorClient(mongo_url)
    events = client[env["HABLA_MONGO_DATABASE"]]["events"]
    said = [
        doc["data"]["text"]
        async for doc in events.find({"sender_id": user, "type_name": "user"}).sort("seq")
    ]
    assert said == ["where is my order?", "AB12345", "when are you open?"]
    client.close()
    for data in (tmp_path / "a", tmp_path / "b"):  # nothing of it in either machine's file
        db = SQLite(data / "habla.sqlite3")
        tables = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master")}
        if "events" in tables:
            assert await db.fetchall("SELECT 1 FROM events WHERE sender_id = ?", (user,)) == []
        await db.close()
    await aioredis.from_url(env["HABLA_REDIS_URL"]).flushdb()
