"""Orders in MongoDB (motor), with the same contract as the embedded SQLite store.

One document per order, its history an array inside it. A status change is a single
``find_one_and_update`` whose filter carries the transition rule (the current status
must be one the new status may follow) and whose update ``$set``s the status and
``$push``es the history entry, so two racing webhooks cannot both win and the history
never disagrees with the status. The ids of the payment events applied to an order are
an array in it too (``events``): the same update pushes the event id, its filter says
``events: {$ne: id}``, so an event is applied once, and only together with its change.
A unique index on ``orders.order_id`` makes ``create`` idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from commerce.orders import (
    TRANSITIONS,
    Order,
    OrderStore,
    TransitionRefused,
    allowed_from,
    check_status,
    new_order,
)
from runtime.retry import TransientError
from runtime.settings import Settings, SettingsError

T = TypeVar("T")
NO_ID = {"_id": False}
SOCKET_TIMEOUT_MS = 15_000
"""A request MongoDB does not answer in this long fails (a transient error, retried),
instead of holding a conversation's turn, and its lock, forever."""


def motor_client(url: str, server_selection_timeout_s: float = 10.0) -> Any:
    """A motor client with habla's timeouts (every MongoDB store opens its own)."""
    return AsyncIOMotorClient(
        url,
        serverSelectionTimeoutMS=int(server_selection_timeout_s * 1000),
        connectTimeoutMS=5_000,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
    )


class MongoOrderStore(OrderStore):
    @classmethod
    def from_settings(cls, settings: Settings, db: Any = None) -> MongoOrderStore:
        c = settings.commerce
        if not c.mongo_url:
            raise SettingsError(["HABLA_MONGO_URL is required when the order store is mongo"])
        return cls(c.mongo_url, c.mongo_database)

    def __init__(
        self,
        url: str,
        database: str = "habla",
        *,
        client: Any = None,
        server_selection_timeout_s: float = 10.0,
    ) -> None:
        """``client``: an AsyncIOMotorClient to share (the caller closes it)."""
        self.url, self.database = url, database
        self.timeout_ms = int(server_selection_timeout_s * 1000)
        self._client = client
        self._owns_client = client is None
        self.orders: Any = None

    async def setup(self) -> None:
        if self._client is None:
            self._client = motor_client(self.url, self.timeout_ms / 1000)
        self.orders = self._client[self.database]["orders"]

        async def indexes() -> None:
            await self.orders.create_index("order_id", unique=True, name="order_id_unique")
            await self.orders.create_index("payment_ref", name="payment_ref")
            await self.orders.create_index(
                [("conversation_id", ASCENDING), ("created_at", ASCENDING)], name="conversation"
            )

        await self._call(indexes)

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None

    @staticmethod
    async def _call(op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except ConnectionFailure as e:  # unreachable, timed out, primary stepped down
            raise TransientError(f"mongo: {type(e).__name__}: {e}") from e

    async def create(self, order: Order) -> tuple[Order, bool]:
        stored = new_order(order, time.time())

        async def insert() -> tuple[Order, bool]:
            try:
                await self.orders.insert_one(stored.to_doc())
                return stored, True
            except DuplicateKeyError:
                existing = await self.orders.find_one({"order_id": order.order_id}, NO_ID)
                if existing is None:  # pragma: no cover - the key holder cannot vanish
                    raise
                return Order.from_doc(existing), False

        return await self._call(insert)

    async def get(self, order_id: str) -> Order | None:
        doc = await self._call(lambda: self.orders.find_one({"order_id": order_id}, NO_ID))
        return Order.from_doc(doc) if doc else None

    async def find_by_payment_ref(self, payment_ref: str) -> Order | None:
        if not payment_ref:
            return None
        doc = await self._call(
            lambda: self.orders.find_one(
                {"payment_ref": payment_ref}, NO_ID, sort=[("created_at", -1)]
            )
        )
        return Order.from_doc(doc) if doc else None

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
        fields: dict[str, Any] = {"updated_at": now}
        if payment_ref is not None:
            fields["payment_ref"] = payment_ref
        if url is not None:
            fields["checkout_url"] = url
        # with an event: only if it was not applied before, and recorded in the same update
        unseen: dict[str, Any] = {} if event_id is None else {"events": {"$ne": event_id}}
        record: dict[str, Any] = {} if event_id is None else {"events": event_id}

        async def write() -> Order | None:
            for _ in range(5):  # the status may change between the guarded write and the read
                doc = await self.orders.find_one_and_update(
                    {"order_id": order_id, "status": {"$in": allowed_from(status)}, **unseen},
                    {
                        "$set": {**fields, "status": status},
                        "$push": {"history": {"status": status, "at": now, "note": note}, **record},
                    },
                    projection=NO_ID,
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    return Order.from_doc(doc)
                repeat: dict[str, Any] = {"$set": fields} if len(fields) > 1 else {}
                if record:
                    repeat["$push"] = record
                if repeat:  # a repeat that brings a new payment_ref or url, or an event
                    doc = await self.orders.find_one_and_update(
                        {"order_id": order_id, "status": status, **unseen},
                        repeat,
                        projection=NO_ID,
                        return_document=ReturnDocument.AFTER,
                    )
                else:
                    doc = await self.orders.find_one(
                        {"order_id": order_id, "status": status}, NO_ID
                    )
                if doc is not None:
                    return Order.from_doc(doc)
                current = await self.orders.find_one({"order_id": order_id}, {"status": True})
                if current is None:
                    return None
                if event_id is not None and await self.orders.find_one(
                    {"order_id": order_id, "events": event_id}, {"_id": True}
                ):
                    return None  # applied before
                if status not in TRANSITIONS[current["status"]]:
                    raise TransitionRefused(order_id, current["status"], status)
            raise TransientError(f"mongo: order {order_id} kept changing under update_status")

        return await self._call(write)

    async def for_conversation(self, conversation_id: str) -> list[Order]:
        async def find() -> list[Order]:
            cursor = self.orders.find({"conversation_id": conversation_id}, NO_ID).sort(
                [("created_at", ASCENDING), ("_id", ASCENDING)]
            )
            return [Order.from_doc(doc) async for doc in cursor]

        return await self._call(find)
