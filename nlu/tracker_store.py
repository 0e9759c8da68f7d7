"""Conversation state behind Rasa's ``TrackerStore`` interface, persisted in SQLite.

Rasa's own ``SQLTrackerStore`` runs synchronous SQLAlchemy inside ``async def``; this
one awaits a database thread (:mod:`runtime.sqlite`). Events are appended, never
rewritten: a save stores only the events the table does not have yet.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NoReturn, Optional

from rasa.core.tracker_store import InMemoryTrackerStore, SerializedTrackerAsText, TrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import SessionStarted
from rasa.shared.core.trackers import DialogueStateTracker

from runtime.errors import TransientError
from runtime.settings import Settings
from runtime.sqlite import SQLite

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sender_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type_name TEXT NOT NULL,
    timestamp REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (sender_id, seq)
);
CREATE INDEX IF NOT EXISTS events_session ON events (sender_id, type_name, seq);
"""

MB = 1024 * 1024
EVENT_BYTES = (
    600  # one cached event: ~290 B deserialized, ~310 B its dict for actions (bench/growth.py)
)
BASE_ATTR = "_habla_first_seq"  # sequence number of a retrieved tracker's first event
SEEN_ATTR = "_habla_next_seq"  # where the log ended when the tracker was loaded or saved


class ConversationMovedOn(TransientError):
    """Another writer appended to the conversation since this tracker was loaded (a
    turn whose lock expired while another server took the conversation): nothing is
    written, and the turn is tried again on the stored state."""

    def __init__(self, sender_id: str) -> None:
        super().__init__(f"conversation …{sender_id[-4:]} moved on since it was loaded")


class AppendOnlyTrackerStore(TrackerStore, SerializedTrackerAsText):
    """An append-only event log per conversation that retrieves the latest session,
    with recently active conversations kept deserialized in memory (``cache_size``).

    A cached tracker is only handed out while the store still ends where it ended when
    the tracker was saved or loaded (:meth:`_next_seq`, one indexed read), so a write
    by another process or server, or a turn that failed before saving, reloads it.
    Subclasses read and write the log (SQLite here, MongoDB in ``mongo_tracker_store``).
    """

    def __init__(
        self,
        domain: Optional[Domain] = None,
        cache_size: int = 0,
        cache_bytes: int = 512 * MB,
        **kwargs: Any,
    ) -> None:
        super().__init__(domain, **kwargs)
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._hot: OrderedDict[str, tuple[DialogueStateTracker, int, int]] = OrderedDict()
        self._hot_events = 0  # events held by the cached trackers (their memory's measure)

    @abstractmethod
    async def _next_seq(self, sender_id: str) -> int:
        """The sequence number the conversation's next event would get."""

    @abstractmethod
    async def _load(self, sender_id: str, full: bool) -> Optional[DialogueStateTracker]:
        """The conversation from its latest session (or from its first event, ``full``),
        with its first event's sequence number set as ``BASE_ATTR``."""

    @staticmethod
    def fenced(tracker: DialogueStateTracker, next_seq: int) -> bool:
        """The fence on conversation state: a tracker may only append where the log
        ended when it was loaded or last saved (``next_seq``: where it ends now). The
        write then takes those sequence numbers, unique per conversation, so a writer
        that loses a race between this check and its insert fails there instead."""
        return getattr(tracker, SEEN_ATTR, next_seq) != next_seq

    def _moved_on(self, tracker: DialogueStateTracker) -> NoReturn:
        self._forget(tracker.sender_id)
        raise ConversationMovedOn(tracker.sender_id)

    def _forget(self, sender_id: str) -> Optional[tuple[DialogueStateTracker, int, int]]:
        hot = self._hot.pop(sender_id, None)
        if hot is not None:
            self._hot_events -= hot[2]
        return hot

    @staticmethod
    def _saw(tracker: DialogueStateTracker, next_seq: int) -> None:
        setattr(tracker, SEEN_ATTR, next_seq)

    def _remember(self, tracker: DialogueStateTracker, next_seq: int) -> None:
        if self.cache_size <= 0:
            return
        self._forget(tracker.sender_id)
        held = len(tracker.events)
        self._hot[tracker.sender_id] = (tracker, next_seq, held)
        self._hot_events += held
        budget = self.cache_bytes // EVENT_BYTES
        while len(self._hot) > self.cache_size or (self._hot_events > budget and self._hot):
            self._hot_events -= self._hot.popitem(last=False)[1][2]

    async def retrieve(self, sender_id: str) -> Optional[DialogueStateTracker]:
        hot = self._forget(sender_id)
        if hot is not None:
            tracker, next_seq, _ = hot
            unsaved = len(tracker.events) != next_seq - getattr(tracker, BASE_ATTR, 0)
            if not unsaved and await self._next_seq(sender_id) == next_seq:
                self._remember(tracker, next_seq)
                return tracker
        tracker = await self._load(sender_id, full=False)
        if tracker is not None:
            next_seq = getattr(tracker, BASE_ATTR) + len(tracker.events)
            self._saw(tracker, next_seq)
            self._remember(tracker, next_seq)
        return tracker

    async def retrieve_full_tracker(self, conversation_id: str) -> Optional[DialogueStateTracker]:
        return await self._load(conversation_id, full=True)


class SQLiteTrackerStore(AppendOnlyTrackerStore):
    """The event log in the embedded SQLite file (one database thread; Rasa's own
    ``SQLTrackerStore`` runs synchronous SQLAlchemy inside ``async def``)."""

    def __init__(
        self, db: SQLite, domain: Optional[Domain] = None, cache_size: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(domain, cache_size, **kwargs)
        self.db = db

    @classmethod
    def from_settings(cls, settings: Settings, db: SQLite) -> SQLiteTrackerStore:
        return cls(
            db,
            cache_size=settings.store.tracker_cache,
            cache_bytes=settings.store.tracker_cache_mb * MB,
        )

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    async def save(self, tracker: DialogueStateTracker) -> None:
        if self.event_broker is not None:
            await self.stream_events(tracker)
        events = list(tracker.events)
        first_seq = getattr(tracker, BASE_ATTR, 0)

        def write(conn: Any) -> tuple[int, bool]:
            # the last event by its key (an index read: the whole log is never scanned)
            row = conn.execute(
                "SELECT seq, timestamp FROM events WHERE sender_id = ? ORDER BY seq DESC LIMIT 1",
                (tracker.sender_id,),
            ).fetchone()
            next_seq, last_ts = (row[0] + 1, row[1]) if row else (0, 0.0)
            if self.fenced(tracker, next_seq):  # (checked and written in one transaction)
                return -1, False
            start = next_seq - first_seq
            aligned = 0 <= start <= len(events)
            if aligned:
                new = [e.as_dict() for e in events[start:]]
            else:  # the tracker was not retrieved from here: fall back to time
                new = [d for d in (e.as_dict() for e in events) if d["timestamp"] > last_ts]
            conn.executemany(
                "INSERT INTO events (sender_id, seq, type_name, timestamp, data) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        tracker.sender_id,
                        next_seq + i,
                        e["event"],
                        e["timestamp"],
                        json.dumps(e, ensure_ascii=False),
                    )
                    for i, e in enumerate(new)
                ],
            )
            return next_seq + len(new), aligned

        next_seq, aligned = await self.db.run(write)
        if next_seq < 0:
            self._moved_on(tracker)
        self._saw(tracker, next_seq)
        if aligned:
            self._remember(tracker, next_seq)
        else:
            self._forget(tracker.sender_id)

    async def _load(self, sender_id: str, full: bool) -> Optional[DialogueStateTracker]:
        def read(conn: Any) -> list[tuple[int, str]]:
            start = 0
            if not full:
                row = conn.execute(
                    "SELECT MAX(seq) FROM events WHERE sender_id = ? AND type_name = ?",
                    (sender_id, SessionStarted.type_name),
                ).fetchone()
                start = row[0] or 0
            return conn.execute(
                "SELECT seq, data FROM events WHERE sender_id = ? AND seq >= ? ORDER BY seq",
                (sender_id, start),
            ).fetchall()

        rows = await self.db.run(read)
        if not rows:
            return None
        tracker = DialogueStateTracker.from_dict(
            sender_id, [json.loads(data) for _, data in rows], self.domain.slots
        )
        setattr(tracker, BASE_ATTR, rows[0][0])
        return tracker

    async def _next_seq(self, sender_id: str) -> int:
        row = await self.db.fetchone(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE sender_id = ?", (sender_id,)
        )
        return int(row[0]) if row else 0

    async def exists(self, conversation_id: str) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM events WHERE sender_id = ? LIMIT 1", (conversation_id,)
        )
        return row is not None

    async def keys(self) -> Iterable[str]:
        return [r[0] for r in await self.db.fetchall("SELECT DISTINCT sender_id FROM events")]


class MemoryTrackerStore(InMemoryTrackerStore):
    """Rasa's in-memory store (conversations are lost on restart)."""

    def __init__(
        self, db: SQLite, domain: Optional[Domain] = None, cache_size: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(domain or Domain.empty(), **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, db: SQLite) -> MemoryTrackerStore:
        return cls(db)

    async def setup(self) -> None:
        return None
