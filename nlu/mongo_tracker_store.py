"""Conversation state in MongoDB (motor), shared by every server: the same append-only
event log as the SQLite store (``nlu/tracker_store.py``), one document per event.

``events`` holds ``{sender_id, seq, type_name, timestamp, data}`` with a unique index on
``(sender_id, seq)``: a save inserts only the events the collection does not have yet,
numbered after the last one, so a save is never a rewrite of the conversation, and two
servers that ever raced on one conversation (the conversation lock prevents it) would
collide on the index instead of interleaving. Retrieving reads from the latest
``session_started`` on. Recently active conversations stay deserialized in memory; a
cached tracker is handed out only while the collection still ends where it ended when
this server saved or loaded it (one indexed query for the last ``seq``), so a turn
another server ran is never missed. Every call runs on motor's event-loop driver: no
blocking call on the loop (Rasa's own ``MongoTrackerStore`` uses blocking pymongo).

Production MongoDB: a replica set with ``w=majority`` (in the URL:
``?w=majority&retryWrites=true``) so an acknowledged turn survives a primary's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Optional, TypeVar

from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import SessionStarted
from rasa.shared.core.trackers import DialogueStateTracker

from nlu.tracker_store import BASE_ATTR, MB, AppendOnlyTrackerStore
from runtime.errors import TransientError
from runtime.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class MongoTrackerStore(AppendOnlyTrackerStore):
    """Append-only event log per conversation in MongoDB; retrieves the latest session."""

    def __init__(
        self,
        url: str,
        database: str = "habla",
        domain: Optional[Domain] = None,
        cache_size: int = 0,
        *,
        server_selection_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(domain, cache_size, **kwargs)
        self.url, self.database = url, database
        self.timeout_ms = int(server_selection_timeout_s * 1000)
        self._client: Any = None
        self.events: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, db: Any = None) -> MongoTrackerStore:
        c = settings.commerce
        if not c.mongo_url:
            raise SettingsError(["HABLA_MONGO_URL is required when the tracker store is mongo"])
        return cls(
            c.mongo_url,
            c.mongo_database,
            cache_size=settings.store.tracker_cache,
            cache_bytes=settings.store.tracker_cache_mb * MB,
        )

    async def setup(self) -> None:
        if self._client is None:
            self._client = AsyncIOMotorClient(  # a request not answered fails, retried
                self.url,
                serverSelectionTimeoutMS=self.timeout_ms,
                connectTimeoutMS=5_000,
                socketTimeoutMS=15_000,
            )
        self.events = self._client[self.database]["events"]

        async def indexes() -> None:
            await self.events.create_index(
                [("sender_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="event_seq"
            )
            await self.events.create_index(
                [("sender_id", ASCENDING), ("type_name", ASCENDING), ("seq", ASCENDING)],
                name="event_session",
            )

        await self._call(indexes)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    @staticmethod
    async def _call(op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except ConnectionFailure as e:  # unreachable, timed out, primary stepped down
            raise TransientError(f"mongo: {type(e).__name__}: {e}") from e

    async def _last(self, sender_id: str) -> tuple[int, float]:
        """The next sequence number and the last event's timestamp."""
        last = await self._call(
            lambda: self.events.find_one(
                {"sender_id": sender_id},
                {"_id": False, "seq": True, "timestamp": True},
                sort=[("seq", DESCENDING)],
            )
        )
        return (int(last["seq"]) + 1, float(last["timestamp"])) if last else (0, 0.0)

    async def _next_seq(self, sender_id: str) -> int:
        return (await self._last(sender_id))[0]

    async def save(self, tracker: DialogueStateTracker) -> None:
        if self.event_broker is not None:
            await self.stream_events(tracker)
        events = list(tracker.events)
        next_seq, last_ts = await self._last(tracker.sender_id)
        if self.fenced(tracker, next_seq):
            self._moved_on(tracker)
        start = next_seq - getattr(tracker, BASE_ATTR, 0)
        aligned = 0 <= start <= len(events)
        if aligned:
            new = [e.as_dict() for e in events[start:]]
        else:  # the tracker was not retrieved from here: fall back to time
            new = [d for d in (e.as_dict() for e in events) if d["timestamp"] > last_ts]
        docs = [
            {
                "sender_id": tracker.sender_id,
                "seq": next_seq + i,
                "type_name": e["event"],
                "timestamp": e["timestamp"],
                "data": e,
            }
            for i, e in enumerate(new)
        ]
        if docs:
            try:
                await self._call(lambda: self.events.insert_many(docs, ordered=True))
            except (DuplicateKeyError, BulkWriteError) as e:
                # another writer got there first, or an earlier attempt of this save whose
                # answer timed out was applied: the turn is retried on the stored state
                if isinstance(e, BulkWriteError) and not _duplicates_only(e):
                    raise
                self._moved_on(tracker)
        self._saw(tracker, next_seq + len(docs))
        if aligned:
            self._remember(tracker, next_seq + len(docs))
        else:
            self._forget(tracker.sender_id)

    async def _load(self, sender_id: str, full: bool) -> Optional[DialogueStateTracker]:
        start = 0
        if not full:
            session = await self._call(
                lambda: self.events.find_one(
                    {"sender_id": sender_id, "type_name": SessionStarted.type_name},
                    {"_id": False, "seq": True},
                    sort=[("seq", DESCENDING)],
                )
            )
            start = int(session["seq"]) if session else 0

        async def read() -> list[dict[str, Any]]:
            cursor = self.events.find(
                {"sender_id": sender_id, "seq": {"$gte": start}},
                {"_id": False, "seq": True, "data": True},
            ).sort("seq", ASCENDING)
            return [doc async for doc in cursor]

        docs = await self._call(read)
        if not docs:
            return None
        tracker = DialogueStateTracker.from_dict(
            sender_id, [d["data"] for d in docs], self.domain.slots
        )
        setattr(tracker, BASE_ATTR, int(docs[0]["seq"]))
        return tracker

    async def exists(self, conversation_id: str) -> bool:
        doc = await self._call(
            lambda: self.events.find_one({"sender_id": conversation_id}, {"_id": True})
        )
        return doc is not None

    async def keys(self) -> Iterable[str]:
        return [str(k) for k in await self._call(lambda: self.events.distinct("sender_id"))]


def _duplicates_only(error: BulkWriteError) -> bool:
    """Whether every write error is a duplicate key (E11000): the events exist."""
    errors = error.details.get("writeErrors") or []
    return bool(errors) and all(e.get("code") == 11000 for e in errors)
