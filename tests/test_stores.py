"""Embedded and Redis stores: inbox (dedupe, leases, claims), locks, ordering; two
servers sharing Redis (conversation state: tests/test_tracker_stores.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from runtime.coordination import (
    Answer,
    InProcessLocks,
    RedisCoordination,
    RedisInbox,
    RedisLocks,
    SQLiteInbox,
)
from runtime.dispatch import Dispatcher
from runtime.messages import BotReply, InboundMessage, Location, MediaRef
from runtime.settings import load_settings
from runtime.sqlite import SQLite
from runtime.turn import Dialogue
from tests.conftest import (
    ServerFactory,
    base_env,
    free_port,
    post_twilio,
    start_redis,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI


def _msg(mid: str, conv: str = "+34600111222", **kw: object) -> InboundMessage:
    return InboundMessage(channel="twilio", conversation_id=conv, message_id=mid, **kw)  # type: ignore[arg-type]


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
    assert await inbox.claim() == []  # leased to this server while it works on them
    pending = await inbox.claim(all_pending=True)  # a lone server's start takes them all
    assert [m.message_id for m in pending] == ["SM1", "SM2"]
    assert pending[0] == rich  # the whole message survives, media and location included
    await inbox.done(pending[0])
    assert not await inbox.is_pending(pending[0]) and await inbox.is_pending(pending[1])
    assert [m.message_id for m in await inbox.claim(all_pending=True)] == ["SM2"]
    assert not await inbox.accept(rich)  # still a duplicate once done
    await db.close()


async def _inbox_leases(inbox: Any) -> None:
    """A message stays with the server renewing its lease; once renewal stops, one
    claim (of several racing) takes it, and nobody after that."""
    kept, lost = _msg("SMlease1"), _msg("SMlease2")
    assert await inbox.accept(kept) and await inbox.accept(lost)
    assert await inbox.claim() == []  # both leased to the server that accepted them
    inbox.lease_s = -1.0  # from now on a lease is over as soon as it is given
    await inbox.renew([lost])  # the server "dies": its last renewal has run out
    inbox.lease_s = 60.0
    await inbox.renew([kept])  # this one is still being worked on
    claims = await asyncio.gather(*(inbox.claim() for _ in range(5)))
    assert sorted(m.message_id for c in claims for m in c) == ["SMlease2"]  # exactly once
    assert await inbox.claim() == []  # the claimer holds it now
    await inbox.done(lost)
    assert not await inbox.is_pending(lost)


async def _inbox_line(inbox: Any) -> None:
    """A conversation's messages take their turns in the order they were accepted."""
    first, second = _msg("SMline1", "+34600999001"), _msg("SMline2", "+34600999001")
    other = _msg("SMline3", "+34600999002")
    for msg in (first, second, other):
        assert await inbox.accept(msg)
    assert await inbox.ahead_in_line(first) is None
    assert await inbox.ahead_in_line(second) == first.key  # the earlier one goes first
    assert await inbox.ahead_in_line(other) is None  # another conversation is not held up
    # the first one's answer waits for the provider: the line moves, delivery does not
    await inbox.defer(first, Answer((BotReply("uno"),)), 60)
    assert await inbox.ahead_in_line(second) is None and await inbox.waiting_before(second)
    await inbox.done(first)
    assert not await inbox.waiting_before(second)
    assert await inbox.ahead_in_line(InboundMessage(channel="rest", conversation_id="x")) is None


async def test_sqlite_inbox_leases_and_line(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "i.sqlite3")
    inbox = SQLiteInbox(db, ttl_s=3600)
    await inbox.setup()
    await _inbox_leases(inbox)
    await _inbox_line(inbox)
    await db.close()


async def test_redis_inbox_leases_and_line(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await _inbox_leases(RedisInbox(client, ttl_s=60, prefix="t-lease"))
    await _inbox_line(RedisInbox(client, ttl_s=60, prefix="t-line"))
    await client.close()


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


async def test_redis_lock_is_renewed_while_held(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    locks = RedisLocks(client, prefix="t-renew", ttl_s=0.3)
    key = "t-renew:lock:+34600111333"
    async with locks.lock("+34600111333"):
        for _ in range(12):  # a turn that lasts four times the lock's expiry
            await asyncio.sleep(0.1)
            assert await client.pttl(key) > 0, "the lock expired while held"
    assert await client.exists(key) == 0  # released
    await client.close()


async def test_redis_inbox_dedupes_across_clients(redis_url: str) -> None:
    c1, c2 = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    a, b = RedisInbox(c1, ttl_s=60, prefix="t-inbox"), RedisInbox(c2, ttl_s=60, prefix="t-inbox")
    msg = _msg("SMredis1", text="hi")
    results = await asyncio.gather(a.accept(msg), b.accept(msg))
    assert sorted(results) == [False, True]  # exactly one instance takes it
    assert await a.claim() == []  # leased to the one that accepted it
    assert [m.message_id for m in await b.claim(all_pending=True)] == ["SMredis1"]
    # accepted in one step: seen, pending and leased together
    assert await c1.hexists("t-inbox:pending", "twilio:SMredis1")
    assert await c1.zscore("t-inbox:leases", "twilio:SMredis1") is not None
    assert await c1.get("t-inbox:last:twilio:+34600111222") is not None
    await b.done(msg)
    assert await a.claim(all_pending=True) == [] and not await a.is_pending(msg)
    assert await c1.zscore("t-inbox:leases", "twilio:SMredis1") is None
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


async def test_a_server_that_stops_renewing_loses_its_messages_to_another(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, redis_url: str, tmp_path: Path
) -> None:
    """Server A accepts a message (200 to Twilio) and dies before answering it: server
    B claims it once A's lease runs out, within seconds, and answers it once."""
    env = base_env(tmp_path / "shared", twilio_api.url) | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/4",
        "HABLA_INBOX_LEASE_S": "1.5",
    }
    client_a, runtime_a = await make_server(env=env, data_dir=tmp_path / "a")
    _, runtime_b = await make_server(env=env, data_dir=tmp_path / "b")
    stuck = asyncio.Event()
    dialogue = next(s for s in runtime_a.turn.answer_stages if isinstance(s, Dialogue))

    class Stuck:
        async def handle(self, msg: InboundMessage) -> list[BotReply]:
            stuck.set()
            await asyncio.Event().wait()  # A hangs in its turn...
            raise AssertionError("unreachable")

    dialogue.engine = Stuck()
    resp = await post_twilio(client_a, whatsapp_form("when are you open?", "+447700900124"))
    assert resp.status == 200
    await asyncio.wait_for(stuck.wait(), 30)
    assert runtime_a._leases is not None
    runtime_a._leases.cancel()  # ...and dies: no more renewals, the turn never settles
    for task in list(runtime_a.dispatcher._tasks):
        task.cancel()
    [reply] = await twilio_api.wait_for(1, timeout=30)  # B took it over
    assert "Monday" in reply.body and reply.to == "whatsapp:+447700900124"
    assert await runtime_b.dispatcher.wait_idle(30)
    assert len(twilio_api.sent) == 1
    assert await runtime_b.inbox.claim(all_pending=True) == []  # settled
    await aioredis.from_url(env["HABLA_REDIS_URL"]).flushdb()


async def test_a_restarted_redis_costs_no_request(tmp_path: Path) -> None:
    """Redis restarts (a deploy, a failover): the pooled connections it closed are
    replaced on their next command instead of failing it (a webhook would get a 503)."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    env = base_env(tmp_path / "data") | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    stores = await RedisCoordination.from_settings(load_settings(env=env), SQLite(tmp_path / "x"))
    try:
        inbox = stores.inbox
        first = [InboundMessage("t", f"+3460000000{i}", message_id=f"SMr{i}") for i in range(8)]
        assert all(await asyncio.gather(*(inbox.accept(m) for m in first)))  # 8 connections
        proc.terminate()
        proc.wait(10)
        proc = start_redis(port, tmp_path)
        later = [InboundMessage("t", f"+3461000000{i}", message_id=f"SMs{i}") for i in range(8)]
        assert all(await asyncio.gather(*(inbox.accept(m) for m in later)))
        async with cast(RedisInbox, inbox).redis.pipeline(transaction=True) as pipe:
            assert await pipe.ping().execute() == [True]
    finally:
        await stores.close()
        proc.terminate()
        proc.wait(10)


async def test_a_turn_that_lost_its_lock_sends_nothing(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, redis_url: str, tmp_path: Path
) -> None:
    """Server A's loop stalls past its conversation lock's expiry, and server B runs the
    same message meanwhile (its lease ran out too) and answers it: A, back, finds the
    lock gone before sending and sends nothing (before: both answered)."""
    env = base_env(tmp_path / "shared", twilio_api.url) | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/5",
    }
    client_a, runtime_a = await make_server(env=env, data_dir=tmp_path / "a")
    _, runtime_b = await make_server(env=env, data_dir=tmp_path / "b")
    redis = aioredis.from_url(env["HABLA_REDIS_URL"])
    dialogue = next(s for s in runtime_a.turn.answer_stages if isinstance(s, Dialogue))
    engine = dialogue.engine

    class Stalled:
        async def handle(self, msg: InboundMessage) -> list[BotReply]:
            replies = await engine.handle(msg)
            # the stall: A's lock expires, B claims the message and answers it
            assert await redis.delete(f"habla:lock:{msg.conversation_id}") == 1
            output = runtime_b.channels[msg.channel].output
            assert output is not None
            await runtime_b.turn.run(replace(msg, resumed=True), output)
            return cast(list[BotReply], replies)

    dialogue.engine = cast(Any, Stalled())
    resp = await post_twilio(client_a, whatsapp_form("when are you open?", "+447700900125"))
    assert resp.status == 200
    assert await runtime_a.dispatcher.wait_idle(60)
    assert [m.to for m in twilio_api.sent] == ["whatsapp:+447700900125"]  # B's, once
    assert "Monday" in twilio_api.sent[0].body
    assert await runtime_a.inbox.claim(all_pending=True) == []  # B settled it
    await redis.flushdb()
    await redis.close()


def test_a_new_sqlite_file_switches_to_wal_although_another_process_holds_the_lock(
    tmp_path: Path,
) -> None:
    """Engine workers open the server's new SQLite file at the same moment; SQLite
    answers the loser of the journal-mode switch "database is locked" without waiting
    (seen once in 120 starts of four processes). The switch is retried; any other
    error is not."""
    import sqlite3

    from runtime import sqlite as module

    class Racing:
        def __init__(self, failures: int, message: str = "database is locked") -> None:
            self.failures, self.message, self.calls = failures, message, 0

        def execute(self, sql: str) -> None:
            assert sql == "PRAGMA journal_mode=WAL"
            self.calls += 1
            if self.calls <= self.failures:
                raise sqlite3.OperationalError(self.message)

    lost_twice = Racing(2)
    module._set_wal(cast(Any, lost_twice))
    assert lost_twice.calls == 3
    broken = Racing(1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        module._set_wal(cast(Any, broken))
    assert broken.calls == 1  # raised at once, not retried
    db = SQLite(tmp_path / "new.sqlite3")  # and a real file ends up in WAL mode
    assert db._connect().execute("PRAGMA journal_mode").fetchone() == ("wal",)
