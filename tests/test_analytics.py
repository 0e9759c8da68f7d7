"""Analytics (habla/analytics.py) on a known set of events, deliveries, orders, outbox
jobs, calls and inbox messages written through the real stores; the operator's
``/api/analytics`` and the ``/admin`` page (login, cookie, SVG charts, escaping)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from commerce.mongo import MongoOrderStore, motor_client
from commerce.orders import Order, SQLiteOrderStore
from commerce.outbox import MongoJobs, SQLiteJobs
from habla.analytics import Analytics, Period, day_of, mask_text
from habla.dashboard import COOKIE, Dashboard
from nlu.mongo_tracker_store import MongoTrackerStore
from nlu.tracker_store import SQLiteTrackerStore
from runtime.calls import CallLog
from runtime.coordination import SQLiteInbox
from runtime.deliveries import MongoDeliveryLog, SQLiteDeliveryLog
from runtime.messages import BotReply, Delivery, InboundMessage, mask_phone
from runtime.sqlite import SQLite
from tests.conftest import ServerFactory

NOW = time.time()
TODAY = day_of(NOW)
YESTERDAY = day_of(NOW - 86400)
A, B = "+34600111222", "+4915112345678"
SCRIPT = "what about the hoodie, call +34 600 999 888 <script>alert(1)</script>"
TOKEN = "operator-secret-token"


def lang(
    code: str, detected: str | None, reason: str, previous: str | None = None
) -> dict[str, Any]:
    out = {"code": code, "detected": detected, "confidence": 0.9, "reason": reason}
    return out | ({"previous": previous} if previous else {})


def user(
    text: str,
    intent: str,
    confidence: float,
    at: float,
    channel: str,
    language: dict[str, Any],
    message_id: str,
    ranking: list[tuple[str, float]] | None = None,
    sentiment: str = "",
    voice: dict[str, Any] | None = None,
) -> UserUttered:
    parse: dict[str, Any] = {
        "intent_ranking": [{"name": n, "confidence": c} for n, c in ranking or []]
    }
    if sentiment:
        parse["sentiment"] = {"label": sentiment, "score": 0.8}
    meta: dict[str, Any] = {"channel": channel, "language": language}
    if voice:
        meta["voice"] = voice
    return UserUttered(
        text,
        {"name": intent, "confidence": confidence},
        [],
        parse,
        timestamp=at,
        input_channel=channel,
        message_id=message_id,
        metadata=meta,
    )


def bot(at: float) -> list[Any]:
    return [
        ActionExecuted("utter_x", timestamp=at),
        BotUttered("ok", timestamp=at),
        ActionExecuted("action_listen", timestamp=at),
    ]


async def build(path: Path, mongo_url: str = "", database: str = "") -> None:
    """The known data: two conversations over yesterday and today, one event 40 days
    ago (outside the period), deliveries, four orders, three outbox jobs, two calls.
    ``mongo_url``: conversations, deliveries, orders and the outbox go to MongoDB."""
    db = SQLite(path)
    motor = motor_client(mongo_url)[database] if mongo_url else None
    y, t = NOW - 86400, NOW - 60
    conv_a = [
        user("hola", "greet", 0.95, y, "twilio", lang("es", "es", "detected"), "SM1"),
        *bot(y),
        user(
            "cuánto cuesta la camiseta",
            "ask_price",
            0.85,
            y + 1,
            "twilio",
            lang("es", "es", "prior"),
            "SM2",
            sentiment="negative",
        ),
        *bot(y + 1),
        user(
            SCRIPT,
            "nlu_fallback",
            0.5,
            t,
            "twilio",
            lang("en", "en", "detected"),
            "SM3",
            ranking=[("nlu_fallback", 0.5), ("ask_price", 0.42), ("buy", 0.3)],
        ),
        *bot(t),
        user(
            "quiero comprar",
            "buy",
            0.75,
            t + 1,
            "twilio",
            lang("es", "es", "detected"),
            "SM4",
            voice={"kind": "audio", "duration_s": 6.0, "confidence": 0.81, "language": "es"},
        ),
        *bot(t + 1),
    ]
    conv_b = [
        user("old", "greet", 0.9, NOW - 40 * 86400, "whatsapp", lang("de", "de", "detected"), "w0"),
        user(
            "hello",
            "greet",
            0.99,
            t,
            "whatsapp",
            lang("en", "en", "detected", previous="de"),  # recorded: German before
            "wamid.1",
            sentiment="positive",
        ),
        *bot(t),
        user(
            "/payment_succeeded",
            "payment_succeeded",
            1.0,
            t + 1,
            "whatsapp",
            lang("en", None, "ambiguous"),
            "habla:payment_succeeded:evt_1",
        ),
        user("/buy", "buy", 1.0, t + 2, "whatsapp", lang("en", None, "ambiguous"), "wamid.2"),
    ]
    trackers: Any = (
        MongoTrackerStore(mongo_url, database) if motor is not None else SQLiteTrackerStore(db)
    )
    await trackers.setup()
    for sender, events in ((A, conv_a), (B, conv_b)):
        await trackers.save(DialogueStateTracker.from_events(sender, events))

    deliveries: Any = MongoDeliveryLog(motor) if motor is not None else SQLiteDeliveryLog(db)
    await deliveries.setup()
    reply = BotReply(text="ok")
    await deliveries.record("twilio", A, reply, Delivery(ok=True, provider_id="SMo1"))
    await deliveries.record("twilio", A, reply, Delivery(ok=True, provider_id="SMo2"))
    await deliveries.record("whatsapp", B, reply, Delivery(ok=False, error="HTTP 500"))
    await deliveries.status("SMo1", "delivered")
    await deliveries.status("SMo2", "undelivered", "63016", f"outside the window of {A}")

    orders: Any = (
        MongoOrderStore(mongo_url, database) if motor is not None else SQLiteOrderStore(db)
    )
    await orders.setup()
    for oid, amount, currency, trail in (
        ("o1", 2500, "EUR", ["link_sent", "paid"]),
        ("o2", 1000, "EUR", ["link_sent", "paid", "refunded"]),
        ("o3", 999, "USD", ["link_sent"]),
        ("o4", 5000, "USD", ["paid"]),
    ):
        item = {"sku": "x", "name": "x", "qty": 1, "unit_amount_minor": amount}
        await orders.create(
            Order(oid, A, "twilio", A, "es", [item | {"currency": currency}], amount, currency)
        )
        for status in trail:
            await orders.update_status(oid, status)

    jobs: Any = MongoJobs(motor) if motor is not None else SQLiteJobs(db)
    await jobs.setup()
    for key, kind in (("crm.order:o1", "crm.order"), ("crm.order:o2", "crm.order")):
        await jobs.insert(kind, {}, key, A, NOW)
    await jobs.insert("payments.checkout", {}, "payments.checkout:o3", A, NOW)
    await jobs.finish("crm.order:o1", "done", 1, "", {})
    await jobs.finish("crm.order:o2", "failed", 5, f"HTTP 400 bad phone {A}", {})

    calls = CallLog(db)
    await calls.setup()
    await calls.started("CA1", A, "twilio_voice", "gather", A)
    await calls.turn("CA1", "es")
    await calls.status("CA1", "completed", 90.0)
    await calls.started("CA2", B, "twilio_voice", "stream", B)
    await calls.status("CA2", "completed", 30.0)

    inbox = SQLiteInbox(db, ttl_s=3600)
    await inbox.setup()
    first = InboundMessage(channel="twilio", conversation_id=A, message_id="SM1")
    await inbox.accept(first)
    await inbox.accept(InboundMessage(channel="twilio", conversation_id=A, message_id="SM9"))
    await inbox.done(first)
    await db.close()
    for store in (trackers, orders):
        if hasattr(store, "close"):
            await store.close()
    if motor is not None:
        motor.client.close()


@pytest.fixture
async def analytics(tmp_path: Path) -> AsyncIterator[Analytics]:
    path = tmp_path / "habla.sqlite3"
    await build(path)
    a = Analytics(path)
    await a.setup()
    yield a
    await a.close()


async def test_report_on_known_data(analytics: Analytics) -> None:
    r = await analytics.report(Period.parse(YESTERDAY, TODAY))
    assert r["period"]["days"] == [YESTERDAY, TODAY]
    assert r["messages"] == {
        "total": 6,
        "system": 1,
        "per_channel": {"twilio": 4, "whatsapp": 2},
        "per_day": {YESTERDAY: {"twilio": 2}, TODAY: {"twilio": 2, "whatsapp": 2}},
    }
    assert r["conversations"] == {"total": 2, "per_day": {YESTERDAY: 1, TODAY: 2}}
    assert r["languages"] == {
        "messages": {"es": 3, "en": 3},
        "conversations": {"en": 2, "es": 1},
        "detected": {"es": 3, "en": 2},
        # into English twice: after "hola" (the message before in the period), and
        # after the German of 40 days ago (recorded as "previous")
        "switched": {"en": 2, "es": 1},
        "reasons": {"detected": 4, "prior": 1, "ambiguous": 1},
    }
    intents = r["intents"]
    assert (intents["nlu_messages"], intents["fallbacks"], intents["fallback_rate"]) == (5, 1, 0.2)
    assert intents["histogram"] == [0, 0, 0, 0, 0, 1, 0, 1, 1, 2]
    top = {i["intent"]: (i["hits"], i["fallbacks"], i["confidence_mean"]) for i in intents["top"]}
    assert [i["intent"] for i in intents["top"]] == ["greet", "ask_price", "buy", "nlu_fallback"]
    assert top == {
        "greet": (2, 0, 0.97),
        "ask_price": (1, 1, 0.85),
        "buy": (1, 0, 0.75),
        "nlu_fallback": (1, 0, 0.5),
    }
    per = {(i["intent"], i["language"]): i for i in intents["by_language"]}
    assert set(per) == {
        ("greet", "es"),
        ("greet", "en"),
        ("ask_price", "es"),
        ("ask_price", "en"),
        ("buy", "es"),
        ("nlu_fallback", "en"),
    }
    # asked in English, the price question fell back: a fallback with no hit
    assert (per[("ask_price", "en")]["hits"], per[("ask_price", "en")]["fallbacks"]) == (0, 1)
    assert per[("greet", "es")]["histogram"] == [0] * 9 + [1]
    assert per[("buy", "es")]["histogram"][7] == 1
    assert r["fallback_messages"] == [
        {
            "at": pytest.approx(NOW - 60),
            "conversation": mask_phone(A),
            "channel": "twilio",
            "language": "en",
            "text": "what about the hoodie, call +34******888 <script>alert(1)</script>",
            "best_guess": "ask_price",
            "confidence": 0.42,
        }
    ]
    assert r["voice"] == {
        "notes": 1,
        "minutes": 0.1,
        "errors": 0,
        "per_channel": {"twilio": 1},
        "stt_confidence_mean": 0.81,
        "stt_confidence_histogram": [0] * 8 + [1, 0],
    }
    zero = {"negative": 0, "neutral": 0, "positive": 0}
    assert r["sentiment"] == {
        "per_day": {YESTERDAY: zero | {"negative": 1}, TODAY: zero | {"positive": 1}},
        "per_language": {"en": zero | {"positive": 1}, "es": zero | {"negative": 1}},
    }
    assert r["outbound"] == {
        "total": 3,
        "per_day": {TODAY: {"twilio": 2, "whatsapp": 1}},
        "per_status": {"delivered": 1, "failed": 1, "undelivered": 1},
    }
    assert r["delivery_failures"] == [
        {"code": "63016", "count": 1, "error": "outside the window of +34******222"},
        {"code": "not_sent", "count": 1, "error": "HTTP 500"},
    ]
    assert r["funnel"] == {
        "price_asked": 1,
        "ordered": 4,
        "link_sent": 3,
        "paid": 3,
        "refunded": 1,
    }
    assert r["revenue"] == [
        {
            "currency": "USD",
            "orders_paid": 1,
            "paid_minor": 5000,
            "refunded_minor": 0,
            "net_minor": 5000,
        },
        {
            "currency": "EUR",
            "orders_paid": 2,
            "paid_minor": 3500,
            "refunded_minor": 1000,
            "net_minor": 2500,
        },
    ]
    outbox = r["outbox"]
    assert outbox["by_kind"] == {
        "crm.order": {"done": 1, "failed": 1},
        "payments.checkout": {"pending": 1},
    }
    assert outbox["pending_now"] == 1
    assert [(j["key"], j["attempts"], j["error"]) for j in outbox["failed"]] == [
        ("crm.order:o2", 5, "HTTP 400 bad phone +34******222")
    ]
    assert r["calls"] == {
        "total": 2,
        "minutes": 2.0,
        "per_language": {"es": 1, "unknown": 1},
        "ended_by": {"caller": 2},
    }
    assert r["inbox"] == {"done": 1, "pending": 1}
    assert r["unavailable"] == []


async def test_same_report_from_mongodb(
    analytics: Analytics, tmp_path: Path, mongo_url: str
) -> None:
    """The same data written through the MongoDB stores (conversations, deliveries,
    orders, outbox) gives the same report as the SQLite file."""
    period = Period.parse(YESTERDAY, TODAY)
    expected = await analytics.report(period)
    path = tmp_path / "mongo-side.sqlite3"  # calls and the inbox stay in SQLite
    await build(path, mongo_url, "analytics")
    mongo = Analytics(
        path,
        mongo=motor_client(mongo_url)["analytics"],
        in_mongo=["events", "deliveries", "orders", "outbox"],
    )
    await mongo.setup()
    try:
        got = await mongo.report(period)
    finally:
        await mongo.close()
    for r in (expected, got):
        r.pop("query_ms")
        for f in r["fallback_messages"]:
            f["at"] = round(f["at"])
        for j in r["outbox"]["failed"]:
            j.pop("at")  # when the job was written, in each backend
    assert got == expected
    assert got["intents"]["fallbacks"] == 1 and got["funnel"]["paid"] == 3


async def test_period_bounds_and_unavailable_stores(tmp_path: Path) -> None:
    await build(tmp_path / "habla.sqlite3")
    away = Analytics(tmp_path / "habla.sqlite3", unavailable=["orders", "outbox", "events"])
    try:
        r = await away.report(Period.parse(day_of(NOW - 40 * 86400), day_of(NOW - 40 * 86400)))
        assert r["messages"]["total"] == 0 and r["funnel"]["ordered"] == 0  # left out
        r = await away.report(Period.parse(YESTERDAY, TODAY))
        assert r["unavailable"] == ["events", "orders", "outbox"]
        assert r["outbox"]["by_kind"] == {} and r["revenue"] == []
        assert r["outbound"]["total"] == 3  # the delivery log is still read
    finally:
        await away.close()
    old = Analytics(tmp_path / "habla.sqlite3")
    try:  # only the 40-day-old message, in German
        day = day_of(NOW - 40 * 86400)
        r = await old.report(Period.parse(day, day))
        assert r["messages"]["per_channel"] == {"whatsapp": 1}
        assert r["languages"]["messages"] == {"de": 1}
        assert r["outbound"]["total"] == 0 and r["funnel"]["ordered"] == 0
    finally:
        await old.close()
    with pytest.raises(ValueError):
        Period.parse("2026-01-02", "2026-01-01")
    with pytest.raises(ValueError):
        Period.parse("2024-01-01", "2026-01-01")
    assert Period.parse(now=0).day_list()[-1] == "1970-01-01"


def test_mask_text() -> None:
    assert mask_text("ring +1 (415) 555-0100 or 600111222") == "ring +14******100 or 60****222"
    assert mask_text("order 12345") == "order 12345"  # too short to be a phone number


@pytest.fixture
async def page(analytics: Analytics) -> AsyncIterator[TestClient]:
    app = web.Application()
    app.add_routes(Dashboard(TOKEN, analytics).routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_login_cookie_and_logout(page: TestClient) -> None:
    login = await page.get("/admin")
    assert login.status == 200 and 'type="password"' in await login.text()
    assert (await page.get("/api/analytics")).status == 403
    wrong = await page.post("/admin/login", data={"token": "guess"}, allow_redirects=False)
    assert wrong.status == 403 and "Set-Cookie" not in wrong.headers
    ok = await page.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
    assert ok.status == 303 and ok.headers["Location"] == "/admin"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http (a public https URL or request makes it Secure)
    assert TOKEN not in cookie
    admin = await page.get(f"/admin?from={YESTERDAY}&to={TODAY}")
    html = await admin.text()
    assert admin.status == 200 and html.count("<svg") >= 10
    assert 'role="img"' in html and "<title" in html and "aria-labelledby" in html
    assert "default-src 'none'" in admin.headers["Content-Security-Policy"]
    # the fallback message: escaped, inert, its phone number masked
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "+34******888" in html and "600 999 888" not in html
    assert TOKEN not in html
    assert (await page.get("/api/analytics")).status == 200  # the session works for JSON
    await page.post("/admin/logout", allow_redirects=False)
    assert 'type="password"' in await (await page.get("/admin")).text()
    # a forged or tampered cookie is refused
    forged = f"{int(time.time()) + 3600}.{'0' * 64}"
    page.session.cookie_jar.update_cookies({COOKIE: forged})
    assert 'type="password"' in await (await page.get("/admin")).text()


async def test_secure_cookie_and_closed_without_token(analytics: Analytics) -> None:
    secure, closed = web.Application(), web.Application()
    secure.add_routes(Dashboard(TOKEN, analytics, secure=True).routes())
    closed.add_routes(Dashboard("", analytics).routes())
    async with TestClient(TestServer(secure)) as client:
        ok = await client.post("/admin/login", data={"token": TOKEN}, allow_redirects=False)
        assert "Secure" in ok.headers["Set-Cookie"]
    async with TestClient(TestServer(closed)) as client:
        refused = await client.post("/admin/login", data={"token": ""}, allow_redirects=False)
        assert refused.status == 403 and "Set-Cookie" not in refused.headers
        assert (await client.get("/admin")).status == 403
        assert (await client.get("/api/analytics")).status == 403


async def test_api_in_the_server(make_server: ServerFactory, tmp_path: Path) -> None:
    """Mounted by habla/server.py: bearer token, from/to, bad dates refused."""
    data = tmp_path / "data"
    data.mkdir()
    await build(data / "habla.sqlite3")
    client, _ = await make_server({"HABLA_ADMIN_TOKEN": TOKEN}, data_dir=data)
    assert (await client.get("/api/analytics")).status == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = await client.get(f"/api/analytics?from={YESTERDAY}&to={TODAY}", headers=auth)
    body = await r.json()
    assert r.status == 200 and body["funnel"]["paid"] == 3 and body["messages"]["total"] == 6
    assert body["intents"]["by_language"] and body["unavailable"] == []
    bad = await client.get("/api/analytics?from=yesterday", headers=auth)
    assert bad.status == 400
