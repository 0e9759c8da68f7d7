"""A record of every outbound message and the statuses providers report for it."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any

from runtime.messages import BotReply, Delivery
from runtime.sqlite import SQLite

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    provider_id TEXT,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_provider ON outbound (provider_id);
CREATE INDEX IF NOT EXISTS outbound_conversation ON outbound (conversation_id, id);
CREATE TABLE IF NOT EXISTS delivery_status (
    provider_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_status_provider ON delivery_status (provider_id, at);
"""


class DeliveryLog(ABC):
    """Every outbound message and the statuses its provider reports (any server may
    receive a status callback for a message another server sent: a shared log)."""

    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def record(
        self, channel: str, conversation_id: str, reply: BotReply, delivery: Delivery
    ) -> None: ...

    @abstractmethod
    async def status(
        self, provider_id: str, status: str, error_code: str = "", error: str = ""
    ) -> bool:
        """Store a provider's status report; False if no message has that id."""

    @abstractmethod
    async def history(self, conversation_id: str) -> list[dict[str, Any]]:
        """The conversation's outbound messages, oldest first, with their status trails."""

    @abstractmethod
    async def statuses(self, provider_id: str) -> list[tuple[str, str, str]]:
        """(status, error code, error) reports for one provider message, in order."""

    async def close(self) -> None:
        return None


class SQLiteDeliveryLog(DeliveryLog):
    def __init__(self, db: SQLite) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    async def record(
        self, channel: str, conversation_id: str, reply: BotReply, delivery: Delivery
    ) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO outbound (channel, conversation_id, provider_id, status, error, "
            "attempts, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                channel,
                conversation_id,
                delivery.provider_id or None,
                "sent" if delivery.ok else "failed",
                delivery.error,
                delivery.attempts,
                json.dumps(asdict(reply), ensure_ascii=False),
                now,
                now,
            ),
        )

    async def status(
        self, provider_id: str, status: str, error_code: str = "", error: str = ""
    ) -> bool:
        """Store a provider's status report; False if no message has that id."""
        now = time.time()

        def write(conn: Any) -> bool:
            conn.execute(
                "INSERT INTO delivery_status VALUES (?, ?, ?, ?, ?)",
                (provider_id, status, error_code, error, now),
            )
            cur = conn.execute(
                "UPDATE outbound SET status = ?, error = CASE WHEN ? = '' THEN error "
                "ELSE ? END, updated_at = ? WHERE provider_id = ?",
                (status, error, error, now, provider_id),
            )
            return bool(cur.rowcount)

        return await self.db.run(write)

    async def history(self, conversation_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT channel, provider_id, status, error, attempts, body, created_at "
            "FROM outbound WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        keys = ("channel", "provider_id", "status", "error", "attempts", "body", "created_at")
        trail = await self.db.fetchall(
            "SELECT s.provider_id, s.status, s.error_code, s.error, s.at FROM delivery_status s "
            "JOIN outbound o ON o.provider_id = s.provider_id WHERE o.conversation_id = ? "
            "ORDER BY s.at",
            (conversation_id,),
        )
        out = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            item["body"] = json.loads(item["body"])
            item["statuses"] = [
                {"status": t[1], "error_code": t[2], "error": t[3], "at": t[4]}
                for t in trail
                if t[0] and t[0] == item["provider_id"]
            ]
            out.append(item)
        return out

    async def statuses(self, provider_id: str) -> list[tuple[str, str, str]]:
        rows = await self.db.fetchall(
            "SELECT status, error_code, error FROM delivery_status WHERE provider_id = ? "
            "ORDER BY at",
            (provider_id,),
        )
        return [(r[0], r[1], r[2]) for r in rows]


class MongoDeliveryLog(DeliveryLog):
    """The log in MongoDB, shared by every server: one document per outbound message
    (``outbound``; its status trail an array inside it), so a status callback that
    reaches another server than the sender still finds its message. ``database`` is a
    motor database (the composition root opens it; the core imports no driver)."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self.outbound = database["outbound"]

    async def close(self) -> None:
        self.database.client.close()

    async def setup(self) -> None:
        await self.outbound.create_index("provider_id", name="provider_id")
        await self.outbound.create_index(
            [("conversation_id", 1), ("created_at", 1)], name="conversation"
        )

    async def record(
        self, channel: str, conversation_id: str, reply: BotReply, delivery: Delivery
    ) -> None:
        now = time.time()
        await self.outbound.insert_one(
            {
                "channel": channel,
                "conversation_id": conversation_id,
                "provider_id": delivery.provider_id or None,
                "status": "sent" if delivery.ok else "failed",
                "error": delivery.error,
                "attempts": delivery.attempts,
                "body": asdict(reply),
                "created_at": now,
                "updated_at": now,
                "statuses": [],
            }
        )

    async def status(
        self, provider_id: str, status: str, error_code: str = "", error: str = ""
    ) -> bool:
        now = time.time()
        update: dict[str, Any] = {
            "$set": {"status": status, "updated_at": now},
            "$push": {
                "statuses": {"status": status, "error_code": error_code, "error": error, "at": now}
            },
        }
        if error:
            update["$set"]["error"] = error
        result = await self.outbound.update_many({"provider_id": provider_id}, update)
        return bool(result.matched_count)

    async def history(self, conversation_id: str) -> list[dict[str, Any]]:
        cursor = self.outbound.find({"conversation_id": conversation_id}, {"_id": False}).sort(
            "created_at", 1
        )
        keys = ("channel", "provider_id", "status", "error", "attempts", "body", "created_at")
        return [
            {**{k: doc.get(k) for k in keys}, "statuses": doc.get("statuses", [])}
            async for doc in cursor
        ]

    async def statuses(self, provider_id: str) -> list[tuple[str, str, str]]:
        doc = await self.outbound.find_one({"provider_id": provider_id}, {"statuses": True})
        trail = doc.get("statuses", []) if doc else []
        return [(t["status"], t["error_code"], t["error"]) for t in trail]
