"""Orders taken in a conversation, with every status they went through.

An order is created once (idempotent by ``order_id``: a repeat returns the stored
order), then moves along :data:`TRANSITIONS` as the checkout link is sent and the
payment provider's webhooks arrive. Each accepted change appends ``{status, at, note}``
to its history in the same write; a repeat of the current status is a no-op, and a
change the table does not allow raises :class:`TransitionRefused` (so a late
``payment_failed`` cannot undo ``paid``, nor ``paid`` undo ``refunded``). Webhook
deliveries are deduplicated by provider event id: ``update_status(..., event_id=...)``
records the event in the same atomic write as the change, so a delivery whose write
failed is applied when the provider retries it, and one that succeeded is applied once.

Two stores keep the same contract: :class:`SQLiteOrderStore` in the embedded SQLite
file every habla store shares, and ``commerce.mongo.MongoOrderStore``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.settings import Settings
from runtime.sqlite import SQLite

STATUSES = ("created", "link_sent", "paid", "failed", "refunded", "expired", "cancelled")

TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"link_sent", "paid", "failed", "expired", "cancelled"}),
    "link_sent": frozenset({"paid", "failed", "expired", "cancelled"}),
    # a declined card leaves the checkout open: the buyer may still pay, or get a new link
    "failed": frozenset({"link_sent", "paid", "expired", "cancelled"}),
    "expired": frozenset({"link_sent", "cancelled"}),
    "paid": frozenset({"refunded"}),
    "refunded": frozenset(),
    # money that arrives after a cancellation is still recorded (and must be refunded)
    "cancelled": frozenset({"paid"}),
}


def allowed_from(status: str) -> list[str]:
    """The statuses an order may be in to move to ``status``."""
    return [s for s, targets in TRANSITIONS.items() if status in targets]


class TransitionRefused(ValueError):
    def __init__(self, order_id: str, current: str, wanted: str) -> None:
        super().__init__(f"order {order_id}: {current} -> {wanted} is not allowed")
        self.order_id, self.current, self.wanted = order_id, current, wanted


@dataclass
class Order:
    order_id: str
    conversation_id: str
    channel: str
    address: str  # the buyer's phone (E.164) or channel address
    language: str  # ISO 639-1
    items: list[dict[str, Any]]  # {sku, name, qty, unit_amount_minor, currency}
    amount_minor: int
    currency: str  # ISO 4217, "EUR"
    status: str = "created"
    payment_ref: str = ""  # provider id: the checkout session, then the paid intent
    checkout_url: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # {status, at, note}
    idempotency_key: str = ""  # for the provider calls made for this order
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. reply_to, email, name

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Order:
        return cls(**{k: doc[k] for k in FIELDS if k in doc})

    def to_doc(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FIELDS}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (for the admin API)."""
        data: dict[str, Any] = json.loads(json.dumps(self.to_doc(), ensure_ascii=False))
        return data


FIELDS = tuple(Order.__dataclass_fields__)


def total_minor(items: Iterable[Mapping[str, Any]]) -> int:
    return sum(int(i["unit_amount_minor"]) * int(i.get("qty", 1)) for i in items)


def new_order(order: Order, now: float) -> Order:
    """``order`` as first stored: validated, timestamped, one history entry."""
    if order.status not in STATUSES:
        raise ValueError(f"unknown order status {order.status!r}")
    if not order.order_id:
        raise ValueError("order_id is empty")
    return replace(
        order,
        created_at=order.created_at or now,
        updated_at=now,
        history=[{"status": order.status, "at": now, "note": "created"}],
        items=[dict(i) for i in order.items],
        metadata=dict(order.metadata),
    )


class OrderStore(ABC):
    """Orders and their status history (registered in runtime/providers.py ORDER_STORES)."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings, db: SQLite) -> OrderStore:
        """Build from the settings (``db``: the embedded SQLite file)."""

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Create tables or indexes."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def create(self, order: Order) -> tuple[Order, bool]:
        """Store ``order``; (the stored order, True) the first time, (the existing
        order, False) when ``order_id`` is already taken."""

    @abstractmethod
    async def get(self, order_id: str) -> Order | None: ...

    @abstractmethod
    async def find_by_payment_ref(self, payment_ref: str) -> Order | None:
        """The order whose current ``payment_ref`` this is."""

    @abstractmethod
    async def update_status(
        self,
        order_id: str,
        status: str,
        note: str = "",
        payment_ref: str | None = None,
        url: str | None = None,
        event_id: str | None = None,
    ) -> Order | None:
        """Move the order to ``status`` and append it to the history, atomically.

        None when there is no such order. A repeat of the current status appends
        nothing (a new ``payment_ref``/``url`` given with it is still stored). Raises
        :class:`TransitionRefused` when :data:`TRANSITIONS` does not allow the change.

        ``event_id``, the payment provider's event that brings the change, is recorded
        as processed in the same write: None, and nothing changes, when it already was.
        A refused or failed update records nothing, so a redelivery is applied.
        """

    @abstractmethod
    async def for_conversation(self, conversation_id: str) -> list[Order]:
        """The conversation's orders, oldest first."""


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown order status {status!r}; one of {', '.join(STATUSES)}")


SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    language TEXT NOT NULL,
    items TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    payment_ref TEXT NOT NULL DEFAULT '',
    checkout_url TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_conversation ON orders (conversation_id, created_at);
CREATE INDEX IF NOT EXISTS orders_payment_ref ON orders (payment_ref) WHERE payment_ref != '';
CREATE TABLE IF NOT EXISTS order_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    status TEXT NOT NULL,
    at REAL NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS order_history_order ON order_history (order_id, id);
CREATE TABLE IF NOT EXISTS payment_events (
    event_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""

_COLUMNS = (
    "order_id, conversation_id, channel, address, language, items, amount_minor, currency, "
    "status, payment_ref, checkout_url, idempotency_key, metadata, created_at, updated_at"
)


class SQLiteOrderStore(OrderStore):
    """Orders in the shared embedded SQLite file; every method is one transaction on
    the database thread, so check-then-write is atomic."""

    def __init__(self, db: SQLite) -> None:
        self.db = db

    @classmethod
    def from_settings(cls, settings: Settings, db: SQLite) -> SQLiteOrderStore:
        return cls(db)

    async def setup(self) -> None:
        await self.db.script(SCHEMA)

    @staticmethod
    def _load(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[Order]:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM orders WHERE {where} ORDER BY created_at, rowid", params
        ).fetchall()
        orders = []
        for row in rows:
            doc = dict(zip(_COLUMNS.split(", "), row, strict=True))
            doc["items"] = json.loads(doc["items"])
            doc["metadata"] = json.loads(doc["metadata"])
            doc["history"] = [
                {"status": s, "at": at, "note": note}
                for s, at, note in conn.execute(
                    "SELECT status, at, note FROM order_history WHERE order_id = ? ORDER BY id",
                    (doc["order_id"],),
                )
            ]
            orders.append(Order.from_doc(doc))
        return orders

    async def create(self, order: Order) -> tuple[Order, bool]:
        stored = new_order(order, time.time())

        def write(conn: sqlite3.Connection) -> tuple[Order, bool]:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO orders ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.order_id,
                    stored.conversation_id,
                    stored.channel,
                    stored.address,
                    stored.language,
                    json.dumps(stored.items, ensure_ascii=False),
                    stored.amount_minor,
                    stored.currency,
                    stored.status,
                    stored.payment_ref,
                    stored.checkout_url,
                    stored.idempotency_key,
                    json.dumps(stored.metadata, ensure_ascii=False),
                    stored.created_at,
                    stored.updated_at,
                ),
            )
            created = cur.rowcount == 1
            if created:
                entry = stored.history[0]
                conn.execute(
                    "INSERT INTO order_history (order_id, status, at, note) VALUES (?, ?, ?, ?)",
                    (stored.order_id, entry["status"], entry["at"], entry["note"]),
                )
            return self._load(conn, "order_id = ?", (stored.order_id,))[0], created

        return await self.db.run(write)

    async def get(self, order_id: str) -> Order | None:
        orders = await self.db.run(lambda c: self._load(c, "order_id = ?", (order_id,)))
        return orders[0] if orders else None

    async def find_by_payment_ref(self, payment_ref: str) -> Order | None:
        if not payment_ref:
            return None
        orders = await self.db.run(lambda c: self._load(c, "payment_ref = ?", (payment_ref,)))
        return orders[-1] if orders else None

    async def update_status(
        self,
        order_id: str,
        status: str,
        note: str = "",
        payment_ref: str | None = None,
        url: str | None = None,
        event_id: str | None = None,
    ) -> Order | None:
        check_status(status)
        now = time.time()

        def write(conn: sqlite3.Connection) -> Order | None:
            if (
                event_id is not None
                and conn.execute(
                    "SELECT 1 FROM payment_events WHERE event_id = ?", (event_id,)
                ).fetchone()
            ):
                return None  # processed before
            row = conn.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,))
            current = row.fetchone()
            if current is None:
                return None
            if current[0] != status and status not in TRANSITIONS[current[0]]:
                raise TransitionRefused(order_id, current[0], status)
            sets: list[str] = ["updated_at = ?"]
            values: list[Any] = [now]
            if payment_ref is not None:
                sets.append("payment_ref = ?")
                values.append(payment_ref)
            if url is not None:
                sets.append("checkout_url = ?")
                values.append(url)
            if current[0] != status:
                sets.append("status = ?")
                values.append(status)
                conn.execute(
                    "INSERT INTO order_history (order_id, status, at, note) VALUES (?, ?, ?, ?)",
                    (order_id, status, now, note),
                )
            if current[0] != status or payment_ref is not None or url is not None:
                conn.execute(
                    f"UPDATE orders SET {', '.join(sets)} WHERE order_id = ?",
                    (*values, order_id),
                )
            if event_id is not None:  # committed with the change, or rolled back with it
                conn.execute(
                    "INSERT INTO payment_events (event_id, at) VALUES (?, ?)", (event_id, now)
                )
            return self._load(conn, "order_id = ?", (order_id,))[0]

        return await self.db.run(write)

    async def for_conversation(self, conversation_id: str) -> list[Order]:
        return await self.db.run(lambda c: self._load(c, "conversation_id = ?", (conversation_id,)))
