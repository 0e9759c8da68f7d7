"""The translation cache: translations by (provider, source, target, text), shared by
every process (SQLite on one machine, Redis across machines). Chosen with the other
conversation-scoped stores by ``HABLA_COORDINATION`` (runtime/coordination.py)."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.sqlite import SQLite


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TranslationCache(ABC):
    """Translations by (provider, source, target, text); ``source`` "" is stored as auto."""

    @abstractmethod
    async def get_many(
        self, provider: str, source: str, target: str, texts: Sequence[str]
    ) -> dict[str, str]:
        """The cached translations of those ``texts`` that have one."""

    @abstractmethod
    async def put_many(
        self, provider: str, source: str, target: str, translations: Mapping[str, str]
    ) -> None:
        """Store text → translation pairs."""


class SQLiteTranslationCache(TranslationCache):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS translations (
        provider TEXT NOT NULL,
        source TEXT NOT NULL,
        target TEXT NOT NULL,
        text_hash TEXT NOT NULL,
        text TEXT NOT NULL,
        translated TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (provider, source, target, text_hash)
    );
    """
    CHUNK = 500  # bound variables per query

    def __init__(self, db: SQLite) -> None:
        self.db = db
        self._ready = False

    async def setup(self) -> None:
        """Create the table (also done on first use)."""
        await self.db.script(self.SCHEMA)
        self._ready = True

    async def _ensure(self) -> None:
        if not self._ready:
            await self.setup()

    async def get_many(
        self, provider: str, source: str, target: str, texts: Sequence[str]
    ) -> dict[str, str]:
        await self._ensure()
        wanted = set(texts)
        hashes = sorted({text_hash(t) for t in wanted})
        found: dict[str, str] = {}
        for i in range(0, len(hashes), self.CHUNK):
            chunk = hashes[i : i + self.CHUNK]
            rows = await self.db.fetchall(
                "SELECT text, translated FROM translations WHERE provider = ? AND source = ?"
                f" AND target = ? AND text_hash IN ({', '.join('?' * len(chunk))})",
                (provider, source or "auto", target, *chunk),
            )
            found.update((text, translated) for text, translated in rows if text in wanted)
        return found

    async def put_many(
        self, provider: str, source: str, target: str, translations: Mapping[str, str]
    ) -> None:
        await self._ensure()
        now = time.time()
        rows = [
            (provider, source or "auto", target, text_hash(t), t, tr, now)
            for t, tr in translations.items()
        ]
        await self.db.run(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )
        )


class RedisTranslationCache(TranslationCache):
    """Keys ``habla:tr:{provider}:{source}:{target}:{sha256}``; ``client`` is a
    ``redis.asyncio.Redis`` owned by the caller."""

    def __init__(
        self, client: Any, ttl_s: int | None = 90 * 86400, prefix: str = "habla:tr"
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.prefix = prefix

    def key(self, provider: str, source: str, target: str, text: str) -> str:
        return f"{self.prefix}:{provider}:{source or 'auto'}:{target}:{text_hash(text)}"

    async def get_many(
        self, provider: str, source: str, target: str, texts: Sequence[str]
    ) -> dict[str, str]:
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        values = await self.client.mget([self.key(provider, source, target, t) for t in unique])
        return {
            t: v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for t, v in zip(unique, values, strict=True)
            if v is not None
        }

    async def put_many(
        self, provider: str, source: str, target: str, translations: Mapping[str, str]
    ) -> None:
        if not translations:
            return
        pipe = self.client.pipeline(transaction=False)
        for text, translated in translations.items():
            pipe.set(self.key(provider, source, target, text), translated, ex=self.ttl_s)
        await pipe.execute()
