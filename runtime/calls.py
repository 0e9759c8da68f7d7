"""A record of every phone call: when it started and ended, how long it lasted, its
mode and language, how many turns and silences it had, and how it ended (the caller
hung up, the bot said goodbye, silence, a transfer). The operator API lists it, with
the voice minutes counted from Twilio's own call durations."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from runtime.sqlite import SQLite

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    mode TEXT NOT NULL,
    caller TEXT NOT NULL,
    status TEXT NOT NULL,
    language TEXT NOT NULL DEFAULT '',
    turns INTEGER NOT NULL DEFAULT 0,
    silences INTEGER NOT NULL DEFAULT 0,
    transferred_to TEXT NOT NULL DEFAULT '',
    ended_by TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    ended_at REAL,
    duration_s REAL
);
CREATE INDEX IF NOT EXISTS calls_conversation ON calls (conversation_id, started_at);
CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at);
"""

FINAL = ("completed", "busy", "failed", "no-answer", "canceled")


@dataclass(frozen=True)
class Call:
    call_sid: str
    conversation_id: str
    channel: str
    mode: str
    caller: str
    status: str
    language: str
    turns: int
    silences: int
    transferred_to: str
    ended_by: str
    started_at: float
    ended_at: float | None
    duration_s: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CallLog:
    def __init__(self, db: SQLite) -> None:
        self.db = db

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    async def started(
        self, call_sid: str, conversation_id: str, channel: str, mode: str, caller: str
    ) -> None:
        """A call came in (a redelivered webhook changes nothing)."""
        await self.db.execute(
            "INSERT OR IGNORE INTO calls (call_sid, conversation_id, channel, mode, caller, "
            "status, started_at) VALUES (?, ?, ?, ?, ?, 'in-progress', ?)",
            (call_sid, conversation_id, channel, mode, caller, time.time()),
        )

    async def turn(self, call_sid: str, language: str) -> None:
        await self.db.execute(
            "UPDATE calls SET turns = turns + 1, language = ? WHERE call_sid = ?",
            (language, call_sid),
        )

    async def silence(self, call_sid: str) -> None:
        await self.db.execute(
            "UPDATE calls SET silences = silences + 1 WHERE call_sid = ?", (call_sid,)
        )

    async def ending(self, call_sid: str, ended_by: str, transferred_to: str = "") -> None:
        """The bot ends the call (``bot``, ``silence``) or hands it over (``transfer``)."""
        await self.db.execute(
            "UPDATE calls SET ended_by = ?, transferred_to = ? WHERE call_sid = ?",
            (ended_by, transferred_to, call_sid),
        )

    async def status(self, call_sid: str, status: str, duration_s: float | None) -> bool:
        """Twilio's status callback; a final one ends the call. False for an unknown call."""
        now = time.time()
        final = status in FINAL
        return (
            await self.db.execute(
                "UPDATE calls SET status = ?, "
                "ended_at = CASE WHEN ? THEN COALESCE(ended_at, ?) ELSE ended_at END, "
                "duration_s = COALESCE(?, duration_s), "
                "ended_by = CASE WHEN ? AND ended_by = '' THEN 'caller' ELSE ended_by END "
                "WHERE call_sid = ?",
                (status, final, now, duration_s, final, call_sid),
            )
            > 0
        )

    async def get(self, call_sid: str) -> Call | None:
        row = await self.db.fetchone("SELECT * FROM calls WHERE call_sid = ?", (call_sid,))
        return Call(*row) if row else None

    async def recent(self, limit: int = 50, conversation_id: str = "") -> list[Call]:
        if conversation_id:
            rows = await self.db.fetchall(
                "SELECT * FROM calls WHERE conversation_id = ? ORDER BY started_at DESC LIMIT ?",
                (conversation_id, limit),
            )
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,)
            )
        return [Call(*row) for row in rows]

    async def active(self, max_age_s: float = 4 * 3600) -> dict[str, int]:
        """Calls in progress by mode (no final status yet; a call older than Twilio's
        longest, 4 hours, whose final status never came, is not counted)."""
        rows = await self.db.fetchall(
            "SELECT mode, COUNT(*) FROM calls WHERE ended_at IS NULL AND started_at >= ? "
            f"AND status NOT IN ({', '.join('?' * len(FINAL))}) GROUP BY mode",
            (time.time() - max_age_s, *FINAL),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def voice_minutes(self, since: float = 0.0) -> float:
        """Minutes of calls Twilio reported as ended since ``since`` (epoch seconds)."""
        row = await self.db.fetchone(
            "SELECT COALESCE(SUM(duration_s), 0) FROM calls WHERE started_at >= ?", (since,)
        )
        return round(float(row[0]) / 60.0, 2) if row else 0.0
