"""The order store contract, run against the embedded SQLite store and against MongoDB
(a real wire-protocol server, SecantusDB, started for this module)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from commerce.mongo import MongoOrderStore
from commerce.orders import Order, OrderStore, SQLiteOrderStore, TransitionRefused, total_minor
from commerce.payments.base import PaymentEvent
from commerce.service import Commerce
from runtime.retry import TransientError
from runtime.settings import SettingsError, load_settings
from runtime.sqlite import SQLite
from tests.conftest import base_env

OpenStore = Callable[[], Awaitable[OrderStore]]


@pytest.fixture(params=["sqlite", "mongo"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "mongo":
        return str(request.getfixturevalue("mongo_url"))
    return str(tmp_path / "habla.sqlite3")


@pytest.fixture
async def open_store(backend: str) -> AsyncIterator[OpenStore]:
    """Opens stores on one database: each call is a new connection (a new SQLite
    connection to the file, a new motor client), as a second worker would have."""
    database = f"habla_test_{uuid.uuid4().hex[:12]}"
    opened: list[tuple[OrderStore, SQLite | None]] = []

    async def open_() -> OrderStore:
        if backend.startswith("mongodb://"):
            store = await _store("mongo", mongo_url=backend, database=database)
            opened.append((store, None))
        else:
            db = SQLite(backend)
            store = await _store("sqlite", sqlite=db)
            opened.append((store, db))
        return store

    yield open_
    for i, (store, db) in enumerate(opened):
        if isinstance(store, MongoOrderStore) and i == 0:
            await store.orders.database.client.drop_database(database)
        await store.close()
        if db is not None:
            await db.close()


@pytest.fixture
async def store(open_store: OpenStore) -> OrderStore:
    return await open_store()


def order(order_id: str = "HB-0001", conversation_id: str = "whatsapp:+34600111222") -> Order:
    items = [
        {"sku": "A1", "name": "t-shirt", "qty": 2, "unit_amount_minor": 1990, "currency": "EUR"},
        {"sku": "A3", "name": "mug", "qty": 1, "unit_amount_minor": 1250, "currency": "EUR"},
    ]
    return Order(
        order_id=order_id,
        conversation_id=conversation_id,
        channel="whatsapp",
        address="+34600111222",
        language="es",
        items=items,
        amount_minor=total_minor(items),
        currency="EUR",
        idempotency_key=f"checkout-{order_id}",
        metadata={"reply_to": "whatsapp:+34600111222", "name": "Lucía"},
    )


async def test_create_twice_keeps_one_order(store: OrderStore, open_store: OpenStore) -> None:
    first, created = await store.create(order())
    assert created and first.status == "created" and first.amount_minor == 5230
    assert [h["status"] for h in first.history] == ["created"]
    assert first.metadata["name"] == "Lucía" and first.items[0]["qty"] == 2
    assert json.loads(json.dumps(first.to_json()))["history"][0]["status"] == "created"

    changed = order()
    changed.amount_minor, changed.items = 1, []
    again, created_again = await store.create(changed)
    assert not created_again
    assert again == first  # the stored order, not the repeat's data

    other = await open_store()  # another connection sees the same single order
    assert await other.get("HB-0001") == first
    assert len(await other.for_conversation("whatsapp:+34600111222")) == 1
    assert await other.get("HB-9999") is None


async def test_history_is_appended_and_repeats_are_no_ops(store: OrderStore) -> None:
    await store.create(order())
    sent = await store.update_status(
        "HB-0001", "link_sent", "checkout link sent", payment_ref="cs_1", url="https://pay/1"
    )
    assert sent is not None
    assert (sent.status, sent.payment_ref, sent.checkout_url) == (
        "link_sent",
        "cs_1",
        "https://pay/1",
    )

    # the same status again: nothing appended, but a new link is kept
    resent = await store.update_status(
        "HB-0001", "link_sent", "sent again", payment_ref="cs_2", url="https://pay/2"
    )
    assert resent is not None and resent.checkout_url == "https://pay/2"
    assert resent.payment_ref == "cs_2"
    plain_repeat = await store.update_status("HB-0001", "link_sent", "and again")
    assert plain_repeat is not None and plain_repeat.checkout_url == "https://pay/2"

    paid = await store.update_status("HB-0001", "paid", "evt_1", payment_ref="pi_1")
    assert paid is not None and paid.status == "paid"
    assert [(h["status"], h["note"]) for h in paid.history] == [
        ("created", "created"),
        ("link_sent", "checkout link sent"),
        ("paid", "evt_1"),
    ]
    times = [h["at"] for h in paid.history]
    assert times == sorted(times) and paid.updated_at >= paid.created_at
    assert await store.get("HB-0001") == paid


async def test_transitions_the_table_forbids_are_refused(store: OrderStore) -> None:
    await store.create(order())
    assert await store.update_status("missing", "paid") is None
    with pytest.raises(ValueError, match="unknown order status"):
        await store.update_status("HB-0001", "shipped")

    await store.update_status("HB-0001", "link_sent")
    await store.update_status("HB-0001", "failed", "Your card was declined.")
    await store.update_status("HB-0001", "paid")  # the buyer tried another card
    refunded = await store.update_status("HB-0001", "refunded", "requested_by_customer")
    assert refunded is not None
    for late in ("paid", "failed", "link_sent", "expired"):
        with pytest.raises(TransitionRefused) as refused:
            await store.update_status("HB-0001", late, "late webhook")
        assert (refused.value.current, refused.value.wanted) == ("refunded", late)
    final = await store.get("HB-0001")
    assert final is not None and final.status == "refunded"
    assert [h["status"] for h in final.history] == [
        "created",
        "link_sent",
        "failed",
        "paid",
        "refunded",
    ]

    await store.create(order("HB-0002"))
    await store.update_status("HB-0002", "expired")
    with pytest.raises(TransitionRefused):
        await store.update_status("HB-0002", "paid")


async def test_a_payment_event_is_applied_once(store: OrderStore, open_store: OpenStore) -> None:
    other = await open_store()  # a second worker
    await store.create(order())
    await store.update_status("HB-0001", "link_sent")
    paid = await store.update_status("HB-0001", "paid", "completed", "pi_1", event_id="evt_1")
    assert paid is not None and paid.status == "paid" and paid.payment_ref == "pi_1"
    assert await other.update_status("HB-0001", "paid", "redelivered", event_id="evt_1") is None
    assert await store.update_status("HB-0001", "refunded", event_id="evt_1") is None
    final = await other.get("HB-0001")
    assert final is not None and final.status == "paid"
    assert [h["status"] for h in final.history] == ["created", "link_sent", "paid"]

    # a refused change, or no such order, records nothing: the event still applies later
    await store.create(order("HB-0002"))
    with pytest.raises(TransitionRefused):
        await store.update_status("HB-0002", "refunded", event_id="evt_2")
    assert await store.update_status("HB-0003", "paid", event_id="evt_3") is None
    await store.create(order("HB-0003"))
    for order_id, event_id in [("HB-0002", "evt_2"), ("HB-0003", "evt_3")]:
        applied = await other.update_status(order_id, "paid", event_id=event_id)
        assert applied is not None and applied.status == "paid"

    # another event bringing the current status: applied (nothing appended), then spent
    repeat = await store.update_status("HB-0002", "paid", "again", "pi_2", event_id="evt_4")
    assert repeat is not None and repeat.payment_ref == "pi_2"
    assert [h["status"] for h in repeat.history] == ["created", "paid"]
    assert await other.update_status("HB-0002", "paid", event_id="evt_4") is None

    # one event delivered six times at once, to two workers: applied by exactly one
    await store.create(order("HB-0005"))
    results = await asyncio.gather(
        *(
            [store, other][i % 2].update_status("HB-0005", "paid", "completed", event_id="evt_5")
            for i in range(6)
        )
    )
    assert sum(r is not None for r in results) == 1
    raced = await store.get("HB-0005")
    assert raced is not None and [h["status"] for h in raced.history] == ["created", "paid"]


async def test_find_by_payment_ref(store: OrderStore) -> None:
    await store.create(order("HB-0001"))
    await store.create(order("HB-0002"))
    await store.update_status("HB-0002", "link_sent", payment_ref="cs_test_b")
    found = await store.find_by_payment_ref("cs_test_b")
    assert found is not None and found.order_id == "HB-0002"

    await store.update_status("HB-0002", "paid", payment_ref="pi_test_b")
    paid = await store.find_by_payment_ref("pi_test_b")
    assert paid is not None and paid.order_id == "HB-0002" and paid.status == "paid"
    assert await store.find_by_payment_ref("cs_test_b") is None
    assert await store.find_by_payment_ref("pi_unknown") is None
    assert await store.find_by_payment_ref("") is None  # HB-0001 has no ref yet


async def test_for_conversation_lists_its_orders_oldest_first(store: OrderStore) -> None:
    for order_id, conversation in [("HB-1", "c1"), ("HB-2", "c2"), ("HB-3", "c1")]:
        await store.create(order(order_id, conversation))
    assert [o.order_id for o in await store.for_conversation("c1")] == ["HB-1", "HB-3"]
    assert await store.for_conversation("nobody") == []


async def test_concurrent_creates_make_one_order(store: OrderStore, open_store: OpenStore) -> None:
    stores = [store, await open_store()]  # two connections racing, as two workers would
    results = await asyncio.gather(*(stores[i % 2].create(order()) for i in range(8)))
    assert sum(created for _, created in results) == 1
    assert len({(o.order_id, o.created_at) for o, _ in results}) == 1
    [stored] = await store.for_conversation("whatsapp:+34600111222")
    assert [h["status"] for h in stored.history] == ["created"]


async def test_racing_webhooks_cannot_both_win(store: OrderStore, open_store: OpenStore) -> None:
    other = await open_store()
    await store.create(order())
    await store.update_status("HB-0001", "link_sent")
    results = await asyncio.gather(
        store.update_status("HB-0001", "paid", "completed"),
        other.update_status("HB-0001", "expired", "expired"),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Order)]
    assert len(winners) == 1
    assert sum(isinstance(r, TransitionRefused) for r in results) == 1
    repeats = await asyncio.gather(
        *(s.update_status("HB-0001", winners[0].status, "redelivered") for s in [store, other] * 3)
    )
    assert all(r is not None and r.status == winners[0].status for r in repeats)
    final = await store.get("HB-0001")
    assert final is not None
    assert [h["status"] for h in final.history] == ["created", "link_sent", winners[0].status]


def paid_event(event_id: str = "evt_paid_1", order_id: str = "HB-0001") -> PaymentEvent:
    return PaymentEvent(
        event_id=event_id,
        type="paid",
        order_id=order_id,
        conversation_id="whatsapp:+34600111222",
        amount_minor=5230,
        currency="EUR",
        provider_ref="pi_1",
        reason="",
        raw_type="checkout.session.completed",
    )


@pytest.fixture
async def service(store: OrderStore, tmp_path: Path) -> AsyncIterator[Commerce]:
    """Commerce over the store under test (its outbox in a SQLite file of its own)."""
    db = SQLite(tmp_path / "outbox.sqlite3")
    yield Commerce(load_settings(env=base_env(tmp_path / "data")), db, orders=store)
    await db.close()


async def test_a_delivery_that_failed_is_applied_when_it_is_retried(
    store: OrderStore, service: Commerce, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(order())
    await store.update_status("HB-0001", "link_sent", payment_ref="cs_1")
    real_update = store.update_status
    failures = [TransientError("the order store timed out")]

    async def update_once_failing(*args: Any, **kwargs: Any) -> Order | None:
        if failures:
            raise failures.pop()
        return await real_update(*args, **kwargs)

    monkeypatch.setattr(store, "update_status", update_once_failing)

    with pytest.raises(TransientError):  # the webhook answers 500 and Stripe retries
        await service.handle_payment_event(paid_event())
    unchanged = await store.get("HB-0001")
    assert unchanged is not None and unchanged.status == "link_sent"

    retried = await service.handle_payment_event(paid_event())
    assert retried is not None
    paid, intent = retried
    assert (paid.status, intent) == ("paid", "payment_succeeded")
    assert await service.handle_payment_event(paid_event()) is None  # a true duplicate
    final = await store.get("HB-0001")
    assert final is not None
    assert [h["status"] for h in final.history] == ["created", "link_sent", "paid"]


async def test_a_write_that_fails_part_way_leaves_the_event_unprocessed(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "habla.sqlite3")
    store = await _store("sqlite", sqlite=db)
    service = Commerce(load_settings(env=base_env(tmp_path / "data")), db, orders=store)
    await store.create(order())
    await store.update_status("HB-0001", "link_sent", payment_ref="cs_1")
    # the database refuses the order's change once, inside the store's own transaction
    await db.script(
        "CREATE TEMP TRIGGER refuse_paid BEFORE UPDATE OF status ON orders "
        "WHEN NEW.status = 'paid' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END;"
    )
    with pytest.raises(sqlite3.DatabaseError, match="disk I/O error"):
        await service.handle_payment_event(paid_event())
    await db.script("DROP TRIGGER refuse_paid")
    unchanged = await store.get("HB-0001")
    assert unchanged is not None and unchanged.status == "link_sent"

    retried = await service.handle_payment_event(paid_event())
    assert retried is not None and retried[0].status == "paid"
    assert await service.handle_payment_event(paid_event()) is None
    await db.close()


async def test_unreachable_mongo_is_a_transient_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MongoOrderStore(f"mongodb://127.0.0.1:{port}/", server_selection_timeout_s=0.2)
    with pytest.raises(TransientError, match="mongo"):
        await store.setup()
    await store.close()


async def test_the_wiring_builds_the_configured_store(tmp_path: Path) -> None:
    from habla.wiring import build_order_store

    env = base_env(tmp_path / "data") | {"HABLA_ORDER_STORE": "mongo"}
    with pytest.raises(SettingsError, match="HABLA_MONGO_URL"):
        load_settings(env=env)
    with pytest.raises(SettingsError, match="order_store"):
        load_settings(env=base_env(tmp_path / "data") | {"HABLA_ORDER_STORE": "redis"})
    db = SQLite(tmp_path / "habla.sqlite3")
    store = await build_order_store(load_settings(env=base_env(tmp_path / "data")), db)
    assert isinstance(store, SQLiteOrderStore)
    await db.close()


async def _store(
    kind: str, sqlite: SQLite | None = None, mongo_url: str = "", database: str = "habla"
) -> OrderStore:
    """A store of ``kind``, set up (as habla/wiring.py builds it)."""
    store: OrderStore = (
        MongoOrderStore(mongo_url, database) if kind == "mongo" else SQLiteOrderStore(sqlite)  # type: ignore[arg-type]
    )
    await store.setup()
    return store
