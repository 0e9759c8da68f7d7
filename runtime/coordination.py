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
from typing import Any

from runtime.errors import TransientError
from runtime.messages import SYSTEM_PREFIX, Button, InboundMessage
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


class ConversationLocks(ABC):
    """One turn at a time per conversation."""

    @abstractmethod
    def lock(self, conversation_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the conversation's lock for the duration of a turn."""

    async def close(self) -> None:
        return None


class InProcessLocks(ConversationLocks):
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def lock(self, conversation_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(conversation_id, asyncio.Lock())
        self._users[conversation_id] = self._users.get(conversation_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[conversation_id] -= 1
            if not self._users[conversation_id]:
                del self._users[conversation_id], self._locks[conversation_id]


class RedisLocks(ConversationLocks):
    """``redis.asyncio`` locks (token-checked release, expiry against crashed holders)."""

    def __init__(
        self, redis: Any, prefix: str = "habla", ttl_s: float = 120.0, wait_s: float = 120.0
    ) -> None:
        self.redis, self.prefix, self.ttl_s, self.wait_s = redis, prefix, ttl_s, wait_s

    @contextlib.asynccontextmanager
    async def lock(self, conversation_id: str) -> AsyncIterator[None]:
        lock = self.redis.lock(
            f"{self.prefix}:lock:{conversation_id}",
            timeout=self.ttl_s,
            sleep=0.01,
            blocking_timeout=self.wait_s,
        )
        if not await lock.acquire():
            raise LockTimeout(f"conversation lock not acquired in {self.wait_s}s")
        try:
            yield
        finally:
            try:
                await lock.release()
            except Exception:  # expired while held: the turn took longer than ttl_s
                logger.warning("conversation lock expired before release")


class Inbox(ABC):
    """Remembers provider message ids; keeps accepted messages until their turn ends."""

    @abstractmethod
    async def accept(self, msg: InboundMessage) -> bool:
        """Record the message; False when its id was seen before (a redelivery)."""

    @abstractmethod
    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        """The message's turn has ended (``done`` or ``failed``)."""

    @abstractmethod
    async def pending(self, older_than_s: float = 0.0) -> list[InboundMessage]:
        """Accepted messages whose turn never ended (e.g. the process died)."""

    @abstractmethod
    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        """When the conversation's latest message on ``channel`` was accepted."""

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
    PRIMARY KEY (channel, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_status ON inbox (status, received_at);
CREATE INDEX IF NOT EXISTS inbox_conversation ON inbox (conversation_id, channel, received_at);
"""


class SQLiteInbox(Inbox):
    def __init__(self, db: SQLite, ttl_s: int) -> None:
        self.db, self.ttl_s = db, ttl_s
        self._last_prune = 0.0

    async def setup(self) -> None:
        await self.db.script(INBOX_SCHEMA)

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
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, 'pending', ?)",
                (msg.channel, msg.message_id, msg.conversation_id, msg.to_json(), now),
            )
            return bool(cur.rowcount == 1)

        return await self.db.run(write)

    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        if msg.message_id:
            await self.db.execute(
                "UPDATE inbox SET status = ? WHERE channel = ? AND message_id = ?",
                (status, msg.channel, msg.message_id),
            )

    async def pending(self, older_than_s: float = 0.0) -> list[InboundMessage]:
        rows = await self.db.fetchall(
            "SELECT payload FROM inbox WHERE status = 'pending' AND received_at <= ? "
            "ORDER BY received_at",
            (time.time() - older_than_s,),
        )
        return [InboundMessage.from_json(r[0]) for r in rows]

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        row = await self.db.fetchone(
            "SELECT MAX(received_at) FROM inbox WHERE conversation_id = ? AND channel = ? "
            "AND message_id NOT LIKE ?",
            (conversation_id, channel, SYSTEM_PREFIX + "%"),
        )
        return float(row[0]) if row and row[0] is not None else None


class RedisInbox(Inbox):
    """``SET NX EX`` per message id; pending messages in one hash until done."""

    def __init__(self, redis: Any, ttl_s: int, prefix: str = "habla") -> None:
        self.redis, self.ttl_s, self.prefix = redis, ttl_s, prefix

    def _key(self, msg: InboundMessage) -> str:
        return f"{msg.channel}:{msg.message_id}"

    async def accept(self, msg: InboundMessage) -> bool:
        if not msg.message_id:
            return True
        key = self._key(msg)
        first = await self.redis.set(f"{self.prefix}:seen:{key}", "1", nx=True, ex=self.ttl_s)
        if not first:
            return False
        await self.redis.hset(f"{self.prefix}:pending", key, msg.to_json())
        if msg.is_system:
            return True
        await self.redis.set(
            f"{self.prefix}:last:{msg.channel}:{msg.conversation_id}",
            str(time.time()),
            ex=self.ttl_s,
        )
        return True

    async def done(self, msg: InboundMessage, status: str = "done") -> None:
        if msg.message_id:
            await self.redis.hdel(f"{self.prefix}:pending", self._key(msg))

    async def pending(self, older_than_s: float = 0.0) -> list[InboundMessage]:
        raw = await self.redis.hgetall(f"{self.prefix}:pending")
        cutoff = time.time() - older_than_s
        msgs = [InboundMessage.from_json(v) for v in raw.values()]
        return sorted((m for m in msgs if m.received_at <= cutoff), key=lambda m: m.received_at)

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        raw = await self.redis.get(f"{self.prefix}:last:{channel}:{conversation_id}")
        return float(raw) if raw else None

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
        inbox = SQLiteInbox(db, settings.store.dedupe_ttl_s)
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

        client = aioredis.from_url(settings.store.redis_url)
        await client.ping()
        return cls(
            RedisLocks(client),
            RedisInbox(client, settings.store.dedupe_ttl_s),
            RedisChoices(client),
            RedisLanguageStore(client),
            RedisTranslationCache(client),
        )
