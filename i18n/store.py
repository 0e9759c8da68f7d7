"""Each conversation's language, kept across restarts (SQLite or Redis)."""

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
"""


class LanguageStore(ABC):
    @abstractmethod
    async def get(self, conversation_id: str) -> tuple[str | None, bool]:
        """(language, whether the user asked for it) or (None, False)."""

    @abstractmethod
    async def set(self, conversation_id: str, language: str, explicit: bool) -> None: ...


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
