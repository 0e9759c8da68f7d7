"""Per-conversation locks and the inbox (de-duplication plus nothing-lost).

Two implementations, chosen by ``store.coordination``:

* ``embedded``: an in-process lock per conversation and an inbox in SQLite. One
  server process.
* ``redis``: ``redis.asyncio`` locks and de-duplication keys, shared by every worker
  and machine pointed at the same Redis.

The inbox records a message before the webhook is acknowledged and marks it done when
its turn ends, so a message acknowledged just before a crash is processed after the
restart instead of being lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from runtime.errors import TransientError
from runtime.messages import SYSTEM_PREFIX, BotReply, Button, InboundMessage
from runtime.preferences import LanguageStore, RedisLanguageStore, SQLiteLanguageStore
from runtime.settings import Settings
from runtime.sqlite import SQLite
from runtime.translation_cache import (
    RedisTranslationCache,
    SQLiteTranslationCache,
    TranslationCache,
)

logger = logging.getLogger(__name__)


class LockTimeout(TransientError):
    """The conversation's lock was not acquired in time (another turn holds it)."""


class Held:
    """A held conversation lock, as the turn sees it: :meth:`still_held` before it
    sends anything (an in-process lock cannot be lost)."""

    async def still_held(self) -> bool:
        return True


HELD = Held()


class ConversationLocks(ABC):
    """One turn at a time per conversation."""

    @abstractmethod
    def lock(self, conversation_id: str) -> contextlib.AbstractAsyncContextManager[Held]:
        """Hold the conversation's lock for the duration of a turn."""

    async def close(self) -> None:
        return None


class InProcessLocks(ConversationLocks):
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def lock(self, conversation_id: str) -> AsyncIterator[Held]:
        lock = self._locks.setdefault(conversation_id, asyncio.Lock())
        self._users[conversation_id] = self._users.get(conversation_id, 0) + 1
        try:
            async with lock:
                yield HELD
        finally:
            self._users[conversation_id] -= 1
            if not self._users[conversation_id]:
                del self._users[conversation_id], self._locks[conversation_id]


class RedisLocks(ConversationLocks):
    """``redis.asyncio`` locks: token-checked release, a short expiry against crashed
    holders, renewed every third of it while the turn runs (so a long turn keeps its
    lock and a dead server's lock frees within ``ttl_s``).

    A server whose event loop stalls longer than two thirds of ``ttl_s`` (a starved
    machine) loses its lock; another server may then run the same message. The turn asks
    :meth:`RedisHeld.still_held` (one ``GET``, the lock's token compared) before it sends
    anything, and leaves the message to the leases if the lock is gone."""

    def __init__(
        self, redis: Any, prefix: str = "habla", ttl_s: float = 30.0, wait_s: float = 120.0
    ) -> None:
        self.redis, self.prefix, self.ttl_s, self.wait_s = redis, prefix, ttl_s, wait_s

    @contextlib.asynccontextmanager
    async def lock(self, conversation_id: str) -> AsyncIterator[Held]:
        lock = self.redis.lock(
            f"{self.prefix}:lock:{conversation_id}",
            timeout=self.ttl_s,
            sleep=0.01,
            blocking_timeout=self.wait_s,
        )
        if not await lock.acquire():
            raise LockTimeout(f"conversation lock not acquired in {self.wait_s}s")
        done = asyncio.Event()
        renewal = asyncio.ensure_future(self._renew(lock, done))
        try:
            yield RedisHeld(lock)
        finally:
            # stopped, not cancelled: a command cancelled half-way can leave its Redis
            # connection out of step, and the next command on it waiting for ever
            done.set()
            try:
                await asyncio.shield(renewal)
            finally:
                try:
                    await lock.release()
                except Exception:  # expired while held: renewal failed (Redis unreachable)
                    logger.warning("conversation lock expired before release")

    async def _renew(self, lock: Any, done: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), self.ttl_s / 3)
            if done.is_set():
                return
            try:
                await lock.reacquire()
            except Exception as e:  # not owned any more, or Redis unreachable: try again
                logger.warning("conversation lock not renewed: %s", e)


class RedisHeld(Held):
    def __init__(self, lock: Any) -> None:
        self.lock = lock

    async def still_held(self) -> bool:
        """Whether the lock is still this turn's (its key holds this turn's token)."""
        return bool(await self.lock.owned())


LEASE_S = 15.0
"""How long an accepted message stays with the server working on it without renewal:
a server that dies stops renewing, and another claims the message after this."""


@dataclass(frozen=True)
class Answer:
    """A turn's replies, stored with its message once the dialogue has answered, and
    how far their delivery got: a resumed message sends only what is left."""

    replies: tuple[BotReply, ...]
    sent: int = 0  # replies delivered (or given up on), in order
    attempts: int = 0  # delivery rounds that failed transiently so far
    failing_since: float = 0.0  # when the first of those failed (0: none has)

    def to_json(self) -> str:
        data = {
            "replies": [r.to_dict() for r in self.replies],
            "sent": self.sent,
            "attempts": self.attempts,
            "failing_since": self.failing_since,
        }
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Answer:
        data = json.loads(raw)
        replies = tuple(BotReply.from_dict(r) for r in data["replies"])
        return cls(replies, int(data["sent"]), int(data["attempts"]), data["failing_since"])


class Inbox(ABC):
    """Remembers provider message ids; keeps accepted messages until their turn ends.

    An accepted message is *leased* to the server that accepted it: that server renews
    the lease while the message waits for and runs its turn (:meth:`renew`). When the
    server dies the lease runs out and any server's :meth:`claim` takes the message,
    once: claiming is atomic. A turn checks :meth:`is_pending` under the conversation's
    lock before it runs, so a message a slow server had lost to another is not answered
    twice.
    """

    lease_s: float = LEASE_S

    @abstractmethod
    async def accept(self, msg: InboundMessage) -> bool:
        """Record the message and lease it to this server, in one atomic step; False
        when its id was seen before (a redelivery)."""

    @abstractmethod
    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        """The message's turn has ended (``done`` or ``failed``)."""

    @abstractmethod
    async def claim(self, limit: int = 100, *, all_pending: bool = False) -> list[InboundMessage]:
        """Accepted messages whose turn never ended and whose lease ran out (the server
        died or stopped), oldest first, now leased to the caller. ``all_pending``: every
        unfinished one, leased or not (a single server's start: nobody else runs them)."""

    @abstractmethod
    async def renew(self, msgs: list[InboundMessage]) -> None:
        """Extend the leases of messages this server is still working on."""

    @abstractmethod
    async def is_pending(self, msg: InboundMessage) -> bool:
        """Whether the message still waits for its turn (not done by any server)."""

    @abstractmethod
    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        """When the conversation's latest message on ``channel`` was accepted."""

    # -- replies: stored with the message, so delivery survives outages and crashes

    @abstractmethod
    async def answer_of(self, msg: InboundMessage) -> Answer | None:
        """The stored answer of a message whose turn ran (None: it has not)."""

    @abstractmethod
    async def save_answer(self, msg: InboundMessage, answer: Answer) -> None:
        """Store (or update) the message's answer and its delivery progress."""

    @abstractmethod
    async def defer(self, msg: InboundMessage, answer: Answer, delay_s: float) -> None:
        """Delivery failed for now: store the progress and let any server claim the
        message again in ``delay_s`` (its lease is set to end then)."""

    @abstractmethod
    async def ahead_in_line(self, msg: InboundMessage) -> str | None:
        """The key of the earliest message of the conversation, accepted before this
        one, that still waits for its turn (None: this one may go): several servers take
        a conversation's messages in the order they were accepted. A message whose
        answer waits for the provider no longer holds the line; its delivery does
        (:meth:`waiting_before`). A message not in the inbox waits for nothing."""

    @abstractmethod
    async def waiting_before(self, msg: InboundMessage) -> bool:
        """Whether an earlier message of the conversation has replies waiting to be
        delivered (so this one's must wait behind them, in order)."""

    @abstractmethod
    async def pending_count(self) -> int:
        """Accepted messages whose turn has not ended (every server's, when shared):
        ``habla_inbox_pending_messages``."""

    async def close(self) -> None:
        return None


INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    channel TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    received_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    answer TEXT,
    waiting INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_status ON inbox (status, received_at);
CREATE INDEX IF NOT EXISTS inbox_conversation ON inbox (conversation_id, channel, received_at);
-- a conversation's unanswered messages (ahead_in_line, waiting_before) without reading the
-- ones answered before: those grow with the conversation, the pending ones do not
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (conversation_id) WHERE status = 'pending';
"""


class SQLiteInbox(Inbox):
    def __init__(self, db: SQLite, ttl_s: int, lease_s: float = LEASE_S) -> None:
        self.db, self.ttl_s, self.lease_s = db, ttl_s, lease_s
        self._last_prune = 0.0

    async def setup(self) -> None:
        await self.db.script(INBOX_SCHEMA)
        columns = {r[1] for r in await self.db.fetchall("PRAGMA table_info(inbox)")}
        for name, ddl in (  # a data folder from before leases and stored answers
            ("lease_until", "lease_until REAL NOT NULL DEFAULT 0"),
            ("answer", "answer TEXT"),
            ("waiting", "waiting INTEGER NOT NULL DEFAULT 0"),
        ):
            if name not in columns:
                await self.db.execute(f"ALTER TABLE inbox ADD COLUMN {ddl}")

    async def accept(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return True
        now = time.time()
        prune = now - self._last_prune > 600
        if prune:
            self._last_prune = now

        def write(conn: Any) -> bool:
            if prune:
                conn.execute(
                    "DELETE FROM inbox WHERE status != 'pending' AND received_at < ?",
                    (now - self.ttl_s,),
                )
            cur = conn.execute(
                "INSERT OR IGNORE INTO inbox (channel, message_id, conversation_id, payload, "
                "status, received_at, lease_until) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (
                    msg.channel,
                    msg.message_id,
                    msg.conversation_id,
                    msg.to_json(),
                    now,
                    now + self.lease_s,
                ),
            )
            return bool(cur.rowcount == 1)

        return await self.db.run(write)

    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        if msg.message_id:
            await self.db.execute(
                "UPDATE inbox SET status = ? WHERE channel = ? AND message_id = ?",
                (status, msg.channel, msg.message_id),
            )

    async def claim(self, limit: int = 100, *, all_pending: bool = False) -> list[InboundMessage]:
        now = time.time()
        expired = float("inf") if all_pending else now

        def take(conn: Any) -> list[str]:
            rows = conn.execute(
                "SELECT channel, message_id, payload FROM inbox WHERE status = 'pending' "
                "AND lease_until < ? ORDER BY received_at LIMIT ?",
                (expired, int(limit)),
            ).fetchall()
            conn.executemany(
                "UPDATE inbox SET lease_until = ? WHERE channel = ? AND message_id = ?",
                [(now + self.lease_s, r[0], r[1]) for r in rows],
            )
            return [r[2] for r in rows]

        return [InboundMessage.from_json(p) for p in await self.db.run(take)]

    async def renew(self, msgs: list[InboundMessage]) -> None:
        until = time.time() + self.lease_s
        rows = [(until, m.channel, m.message_id) for m in msgs if m.message_id]
        if rows:
            await self.db.run(
                lambda conn: conn.executemany(
                    "UPDATE inbox SET lease_until = ? WHERE channel = ? AND message_id = ? "
                    "AND status = 'pending'",
                    rows,
                )
            )

    async def is_pending(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return True
        row = await self.db.fetchone(
            "SELECT status FROM inbox WHERE channel = ? AND message_id = ?",
            (msg.channel, msg.message_id),
        )
        return row is None or row[0] == "pending"

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        row = await self.db.fetchone(
            "SELECT MAX(received_at) FROM inbox WHERE conversation_id = ? AND channel = ? "
            "AND message_id NOT LIKE ?",
            (conversation_id, channel, SYSTEM_PREFIX + "%"),
        )
        return float(row[0]) if row and row[0] is not None else None

    async def answer_of(self, msg: InboundMessage) -> Answer | None:
        if not msg.message_id:
            return None
        row = await self.db.fetchone(
            "SELECT answer FROM inbox WHERE channel = ? AND message_id = ?",
            (msg.channel, msg.message_id),
        )
        return Answer.from_json(row[0]) if row and row[0] else None

    async def save_answer(self, msg: InboundMessage, answer: Answer) -> None:
        await self._store(msg, answer, waiting=False)

    async def defer(self, msg: InboundMessage, answer: Answer, delay_s: float) -> None:
        await self._store(msg, answer, waiting=True, lease_until=time.time() + delay_s)

    async def _store(
        self, msg: InboundMessage, answer: Answer, *, waiting: bool, lease_until: float = 0
    ) -> None:
        if not msg.message_id:
            return
        lease = ", lease_until = ?" if lease_until else ""
        params: tuple[Any, ...] = (answer.to_json(), int(waiting))
        params += (lease_until,) if lease_until else ()
        await self.db.execute(
            f"UPDATE inbox SET answer = ?, waiting = ?{lease} WHERE channel = ? AND message_id = ?",
            params + (msg.channel, msg.message_id),
        )

    async def ahead_in_line(self, msg: InboundMessage) -> str | None:
        if not msg.message_id:
            return None
        row = await self.db.fetchone(
            "SELECT channel, message_id FROM inbox WHERE conversation_id = ? "
            "AND status = 'pending' AND waiting = 0 AND rowid < (SELECT rowid FROM inbox "
            "WHERE channel = ? AND message_id = ?) ORDER BY rowid LIMIT 1",
            (msg.conversation_id, msg.channel, msg.message_id),
        )
        return f"{row[0]}:{row[1]}" if row else None

    async def waiting_before(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return False
        row = await self.db.fetchone(  # (a message not in the inbox waits for nothing)
            "SELECT 1 FROM inbox WHERE conversation_id = ? AND status = 'pending' "
            "AND waiting = 1 AND rowid < (SELECT rowid FROM inbox WHERE channel = ? "
            "AND message_id = ?) LIMIT 1",
            (msg.conversation_id, msg.channel, msg.message_id),
        )
        return row is not None

    async def pending_count(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM inbox WHERE status = 'pending'")
        return int(row[0]) if row else 0


# Redis: accepting is one script (seen + pending + lease + last inbound), so a crash
# between the writes cannot lose a message that was acknowledged.
ACCEPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
if ARGV[6] == '1' then redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[1]) end
redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[5]), ARGV[2])
return 1
"""
# pending messages whose lease ran out (or, with ARGV[4] = 1, every pending one, and
# those accepted before leases existed), leased to the caller
CLAIM = """
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('ZADD', KEYS[2], 'NX', 0, field)
end
local bound = '(' .. ARGV[1]
if ARGV[4] == '1' then bound = '+inf' end
local fields = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', bound, 'LIMIT', 0, ARGV[3])
local out = {}
for _, field in ipairs(fields) do
  local payload = redis.call('HGET', KEYS[1], field)
  if payload then
    redis.call('ZADD', KEYS[2], ARGV[2], field)
    table.insert(out, payload)
  else
    redis.call('ZREM', KEYS[2], field)
  end
end
return out
"""


# A message's place in its conversation's line is the score the accept script gave it;
# a deferred answer waits in a second sorted set with the same score. Not in the line:
# not in the inbox (a call's turn), which waits for nothing.
DEFER = """
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if seq then redis.call('ZADD', KEYS[2], seq, ARGV[1]) end
redis.call('ZADD', KEYS[4], 'XX', ARGV[3], ARGV[1])
return 1
"""
AHEAD_IN_LINE = """
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seq then return false end
for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. seq)) do
  if not redis.call('ZSCORE', KEYS[2], field) then return field end
end
return false
"""
WAITING_BEFORE = """
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seq then return 0 end
return #redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. seq, 'LIMIT', 0, 1)
"""


class RedisInbox(Inbox):
    """``SET NX EX`` per message id, the message in one hash and its lease in a sorted
    set until done, written together by one script."""

    def __init__(
        self, redis: Any, ttl_s: int, prefix: str = "habla", lease_s: float = LEASE_S
    ) -> None:
        self.redis, self.ttl_s, self.prefix, self.lease_s = redis, ttl_s, prefix, lease_s
        self._accept = redis.register_script(ACCEPT)
        self._claim = redis.register_script(CLAIM)
        self._defer = redis.register_script(DEFER)
        self._first = redis.register_script(AHEAD_IN_LINE)
        self._waits = redis.register_script(WAITING_BEFORE)
        self._pending, self._leases = f"{prefix}:pending", f"{prefix}:leases"
        self._answers = f"{prefix}:answers"

    async def accept(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return True
        key, now = msg.key, time.time()
        keys = [
            f"{self.prefix}:seen:{key}",
            self._pending,
            self._leases,
            f"{self.prefix}:last:{msg.channel}:{msg.conversation_id}",
            f"{self.prefix}:seq",
            self._line(msg),
        ]
        args = [self.ttl_s, key, msg.to_json(), now + self.lease_s, now, int(not msg.is_system)]
        return bool(await self._accept(keys=keys, args=args))

    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        if msg.message_id:
            key = msg.key
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._pending, key).zrem(self._leases, key)
                pipe.hdel(self._answers, key).zrem(self._waiting(msg), key)
                pipe.zrem(self._line(msg), key)
                await pipe.execute()

    async def claim(self, limit: int = 100, *, all_pending: bool = False) -> list[InboundMessage]:
        now = time.time()
        args = [now, now + self.lease_s, int(limit), int(all_pending)]
        raw = await self._claim(keys=[self._pending, self._leases], args=args)
        msgs = [InboundMessage.from_json(v) for v in raw]
        return sorted(msgs, key=lambda m: m.received_at)

    async def renew(self, msgs: list[InboundMessage]) -> None:
        until = time.time() + self.lease_s
        fields = {m.key: until for m in msgs if m.message_id}
        if fields:
            await self.redis.zadd(self._leases, fields, xx=True)

    async def is_pending(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return True
        return bool(await self.redis.hexists(self._pending, msg.key))

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        raw = await self.redis.get(f"{self.prefix}:last:{channel}:{conversation_id}")
        return float(raw) if raw else None

    async def answer_of(self, msg: InboundMessage) -> Answer | None:
        if not msg.message_id:
            return None
        raw = await self.redis.hget(self._answers, msg.key)
        return Answer.from_json(raw) if raw else None

    async def save_answer(self, msg: InboundMessage, answer: Answer) -> None:
        if msg.message_id:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._answers, msg.key, answer.to_json())
                pipe.zrem(self._waiting(msg), msg.key)
                await pipe.execute()

    async def defer(self, msg: InboundMessage, answer: Answer, delay_s: float) -> None:
        if msg.message_id:
            keys = [self._line(msg), self._waiting(msg), self._answers, self._leases]
            args = [msg.key, answer.to_json(), time.time() + delay_s]
            await self._defer(keys=keys, args=args)

    async def ahead_in_line(self, msg: InboundMessage) -> str | None:
        if not msg.message_id:
            return None
        keys = [self._line(msg), self._waiting(msg)]
        ahead = await self._first(keys=keys, args=[msg.key])
        return ahead.decode() if isinstance(ahead, bytes) else ahead or None

    def _line(self, msg: InboundMessage) -> str:
        """The conversation's messages by the order they were accepted in (a counter)."""
        return f"{self.prefix}:line:{msg.conversation_id}"

    async def waiting_before(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return False
        keys = [self._line(msg), self._waiting(msg)]
        return bool(await self._waits(keys=keys, args=[msg.key]))

    def _waiting(self, msg: InboundMessage) -> str:
        return f"{self.prefix}:waiting:{msg.conversation_id}"

    async def pending_count(self) -> int:
        return int(await self.redis.hlen(self._pending))

    async def close(self) -> None:
        await self.redis.close()


class Choices(ABC):
    """The buttons a channel last showed a conversation as numbered text.

    Written by the turn after it renders, read when the user answers "2": the numbers
    are the channel's rendering, so the turn remembers them rather than asking Rasa.
    """

    @abstractmethod
    async def remember(self, conversation_id: str, buttons: tuple[Button, ...]) -> None:
        """Store the latest buttons shown (empty: forget)."""

    @abstractmethod
    async def recall(self, conversation_id: str) -> list[Button]:
        """The buttons shown after the user's last message."""


CHOICES_SCHEMA = """
CREATE TABLE IF NOT EXISTS choices (
    conversation_id TEXT PRIMARY KEY,
    buttons TEXT NOT NULL
);
"""


def _dump(buttons: tuple[Button, ...]) -> str:
    return json.dumps([[b.title, b.payload] for b in buttons], ensure_ascii=False)


def _load(raw: str | bytes) -> list[Button]:
    return [Button(title, payload) for title, payload in json.loads(raw)]


class SQLiteChoices(Choices):
    def __init__(self, db: SQLite) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.script(CHOICES_SCHEMA)

    async def remember(self, conversation_id: str, buttons: tuple[Button, ...]) -> None:
        if buttons:
            await self.db.execute(
                "INSERT OR REPLACE INTO choices VALUES (?, ?)", (conversation_id, _dump(buttons))
            )
        else:
            await self.db.execute(
                "DELETE FROM choices WHERE conversation_id = ?", (conversation_id,)
            )

    async def recall(self, conversation_id: str) -> list[Button]:
        row = await self.db.fetchone(
            "SELECT buttons FROM choices WHERE conversation_id = ?", (conversation_id,)
        )
        return _load(row[0]) if row else []


class RedisChoices(Choices):
    def __init__(self, redis: Any, prefix: str = "habla", ttl_s: int = 7 * 86400) -> None:
        self.redis, self.prefix, self.ttl_s = redis, prefix, ttl_s

    async def remember(self, conversation_id: str, buttons: tuple[Button, ...]) -> None:
        key = f"{self.prefix}:choices:{conversation_id}"
        if buttons:
            await self.redis.set(key, _dump(buttons), ex=self.ttl_s)
        else:
            await self.redis.delete(key)

    async def recall(self, conversation_id: str) -> list[Button]:
        raw = await self.redis.get(f"{self.prefix}:choices:{conversation_id}")
        return _load(raw) if raw else []


class Coordination(ABC):
    """Conversation-scoped state every server process shares: locks, the inbox,
    numbered choices, language and reply preferences, the translation cache.

    Chosen by ``store.coordination`` (``runtime/providers.py`` COORDINATION); each
    backend builds itself with :meth:`from_settings`.
    """

    def __init__(
        self,
        locks: ConversationLocks,
        inbox: Inbox,
        choices: Choices,
        languages: LanguageStore,
        translations: TranslationCache,
    ) -> None:
        self.locks, self.inbox, self.choices = locks, inbox, choices
        self.languages, self.translations = languages, translations

    @classmethod
    @abstractmethod
    async def from_settings(cls, settings: Settings, db: SQLite) -> Coordination:
        """Connect the backend and build every store (registered in runtime/providers.py)."""

    async def close(self) -> None:
        await self.locks.close()
        await self.inbox.close()


class EmbeddedCoordination(Coordination):
    """One server process: in-process locks, everything else in the SQLite file."""

    @classmethod
    async def from_settings(cls, settings: Settings, db: SQLite) -> Coordination:
        inbox = SQLiteInbox(db, settings.store.dedupe_ttl_s, settings.store.inbox_lease_s)
        choices = SQLiteChoices(db)
        languages = SQLiteLanguageStore(db)
        translations = SQLiteTranslationCache(db)
        for store in (inbox, choices, languages, translations):
            await store.setup()
        return cls(InProcessLocks(), inbox, choices, languages, translations)


class RedisCoordination(Coordination):
    """Several processes or machines: everything in the Redis at ``store.redis_url``."""

    @classmethod
    async def from_settings(cls, settings: Settings, db: SQLite) -> Coordination:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # every command has a deadline: Redis not answering is a transient error, retried,
        # never a turn (and its conversation's lock) waiting for ever. A pooled connection
        # that a restarted Redis closed fails its next command: that is tried again on a
        # new connection (twice, 50-100 ms apart; pipelines are not, so a connection idle
        # for 5 s is checked first) instead of failing a turn
        client = aioredis.from_url(
            settings.store.redis_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.05), 2),
            retry_on_error=[RedisConnectionError],
            health_check_interval=5,  # an idle connection is checked (PING) before use
        )
        await client.ping()
        lease_s = settings.store.inbox_lease_s
        return cls(
            # 30 s, not shorter: a server whose loop stalls (a starved machine) keeps its
            # locks, so a message claimed from it meanwhile waits instead of going twice;
            # a dead server's lock frees within that
            RedisLocks(client),
            RedisInbox(client, settings.store.dedupe_ttl_s, lease_s=lease_s),
            RedisChoices(client),
            RedisLanguageStore(client),
            RedisTranslationCache(client),
        )
