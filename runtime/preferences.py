"""Each conversation's language and reply preferences (e.g. text-only), kept across
restarts (SQLite or Redis)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from runtime.sqlite import SQLite

SCHEMA = """
CREATE TABLE IF NOT EXISTS languages (
    conversation_id TEXT PRIMARY KEY,
    language TEXT NOT NULL,
    explicit INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS preferences (
    conversation_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (conversation_id, key)
);
"""


class LanguageStore(ABC):
    @abstractmethod
    async def get(self, conversation_id: str) -> tuple[str | None, bool]:
        """(language, whether the user asked for it) or (None, False)."""

    @abstractmethod
    async def set(self, conversation_id: str, language: str, explicit: bool) -> None: ...

    @abstractmethod
    async def preference(self, conversation_id: str, key: str) -> str | None:
        """A stored preference of the user (e.g. ``reply_mode``), if any."""

    @abstractmethod
    async def set_preference(self, conversation_id: str, key: str, value: str) -> None: ...


class SQLiteLanguageStore(LanguageStore):
    def __init__(self, db: SQLite) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    async def get(self, conversation_id: str) -> tuple[str | None, bool]:
        row = await self.db.fetchone(
            "SELECT language, explicit FROM languages WHERE conversation_id = ?",
            (conversation_id,),
        )
        return (str(row[0]), bool(row[1])) if row else (None, False)

    async def set(self, conversation_id: str, language: str, explicit: bool) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO languages VALUES (?, ?, ?, ?)",
            (conversation_id, language, int(explicit), time.time()),
        )

    async def preference(self, conversation_id: str, key: str) -> str | None:
        row = await self.db.fetchone(
            "SELECT value FROM preferences WHERE conversation_id = ? AND key = ?",
            (conversation_id, key),
        )
        return str(row[0]) if row else None

    async def set_preference(self, conversation_id: str, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO preferences VALUES (?, ?, ?)", (conversation_id, key, value)
        )


class RedisLanguageStore(LanguageStore):
    def __init__(self, redis: Any, prefix: str = "habla") -> None:
        self.redis, self.prefix = redis, prefix

    async def get(self, conversation_id: str) -> tuple[str | None, bool]:
        raw = await self.redis.hgetall(f"{self.prefix}:lang:{conversation_id}")
        if not raw:
            return None, False
        return raw[b"language"].decode(), raw.get(b"explicit") == b"1"

    async def set(self, conversation_id: str, language: str, explicit: bool) -> None:
        await self.redis.hset(
            f"{self.prefix}:lang:{conversation_id}",
            mapping={"language": language, "explicit": "1" if explicit else "0"},
        )

    async def preference(self, conversation_id: str, key: str) -> str | None:
        raw = await self.redis.hget(f"{self.prefix}:pref:{conversation_id}", key)
        return raw.decode() if raw is not None else None

    async def set_preference(self, conversation_id: str, key: str, value: str) -> None:
        await self.redis.hset(f"{self.prefix}:pref:{conversation_id}", key, value)
