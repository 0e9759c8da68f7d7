"""PayPal payments: the adapter against a local fake of PayPal's REST API (OAuth2,
Orders v2, captures, refunds, subscriptions, PayPal-Request-Id replay), webhooks
signed the way PayPal signs them (CRC32 + SHA256withRSA with the fake's certificate),
and the shop end to end over the WhatsApp Cloud API, in Spanish, paid through PayPal."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from commerce.payments import LineItem, Payments, WebhookSignatureError
from commerce.payments.paypal import PayPalPayments, minor_amount, paypal_amount
from runtime.providers import PAYMENTS
from runtime.retry import PermanentError, TransientError
from tests.conftest import PROJECT, STRIPE_KEY, WHSEC, ServerFactory, whatsapp_env
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.paypal_api import FakePayPalAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_shop import ADMIN, USER, Shop, eventually, texts

CLIENT_ID = "AYhabla-sandbox-client-0123456789"
SECRET = "EHhabla-sandbox-secret-0123456789"
WEBHOOK_ID = "8PT597110X687430LKGECATA"
PLANS = {"P-5ML4271244454362WXNWU5NQ": {"value": "9.00", "currency_code": "EUR"}}
URLS = {
    "success_url": "https://bot.example.com/shop/thanks",
    "cancel_url": "https://bot.example.com/shop/cancel",
}
HOODIE = LineItem("A2", "sudadera", 3990, "EUR")
MUG = LineItem("A3", "taza", 1250, "EUR", quantity=2)


@pytest.fixture
async def paypal_api() -> AsyncIterator[FakePayPalAPI]:
    fake = FakePayPalAPI(CLIENT_ID, SECRET, WEBHOOK_ID, plans=PLANS)
    await fake.start()
    yield fake
    await fake.close()


def adapter(fake: FakePayPalAPI, **kw: Any) -> PayPalPayments:
    args: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "webhook_id": WEBHOOK_ID,
        "api_base": fake.url,
        "plans": {"S1": "P-5ML4271244454362WXNWU5NQ"},
        "timeout_s": 5,
    }
    return PayPalPayments(**(args | kw))


@pytest.fixture
async def payments(paypal_api: FakePayPalAPI) -> AsyncIterator[PayPalPayments]:
    p = adapter(paypal_api)
    yield p
    await p.close()


async def checkout(payments: PayPalPayments, key: str = "checkout-HB01", **kw: Any) -> Any:
    items = kw.pop("items", [HOODIE, MUG])
    return await payments.create_checkout(
        kw.pop("order_id", "HB01"), "+34611222333", items, idempotency_key=key, **(URLS | kw)
    )


def api_requests(fake: FakePayPalAPI, path_end: str) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith(path_end)]


# -- the adapter against the fake ---------------------------------------------------


async def test_an_order_carries_amounts_ids_urls_and_the_request_id(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    link = await checkout(payments, customer_email="lucia@example.com")
    [order] = paypal_api.orders.values()
    assert link.provider_id == order["id"] and order["status"] == "PAYER_ACTION_REQUIRED"
    assert link.url == f"https://www.sandbox.paypal.com/checkoutnow?token={order['id']}"
    [create] = api_requests(paypal_api, "/v2/checkout/orders")
    assert create.headers["PayPal-Request-Id"] == "checkout-HB01"
    assert create.headers["Authorization"].startswith("Bearer A21AA")
    assert create.body["intent"] == "CAPTURE"
    [unit] = create.body["purchase_units"]
    assert (unit["custom_id"], unit["reference_id"]) == ("HB01", "+34611222333")
    assert unit["amount"] == {
        "currency_code": "EUR",
        "value": "64.90",
        "breakdown": {"item_total": {"currency_code": "EUR", "value": "64.90"}},
    }
    assert [(i["sku"], i["quantity"], i["unit_amount"]["value"]) for i in unit["items"]] == [
        ("A2", "1", "39.90"),
        ("A3", "2", "12.50"),
    ]
    source = create.body["payment_source"]["paypal"]
    assert source["email_address"] == "lucia@example.com"
    assert source["experience_context"] == URLS_CONTEXT
    # the token endpoint got the client credentials over Basic auth, once
    [token] = [r for r in paypal_api.requests if r.path == "/v1/oauth2/token"]
    assert token.headers["Authorization"].startswith("Basic ")
    assert token.body == {"grant_type": "client_credentials"}

    again = await checkout(payments, customer_email="lucia@example.com")  # a retry
    assert again == link and len(paypal_api.orders) == 1
    assert [r.replayed for r in api_requests(paypal_api, "/v2/checkout/orders")] == [False, True]
    assert paypal_api.token_requests == 1  # the token is cached


URLS_CONTEXT = {
    "return_url": URLS["success_url"],
    "cancel_url": URLS["cancel_url"],
    "user_action": "PAY_NOW",
}


def test_amounts_are_paypal_decimal_strings() -> None:
    assert paypal_amount(3990, "EUR") == "39.90"
    assert paypal_amount(1200, "JPY") == "1200"  # zero-decimal: minor unit is the yen
    assert paypal_amount(199000, "HUF") == "1990"  # PayPal takes HUF without decimals
    with pytest.raises(PermanentError, match="whole"):
        paypal_amount(199050, "HUF")
    with pytest.raises(PermanentError, match="KWD"):
        paypal_amount(5120, "KWD")
    assert minor_amount("39.90", "EUR") == 3990 and minor_amount("1200", "JPY") == 1200
    assert minor_amount(None, "EUR") == 0


async def test_jpy_order_has_no_decimals(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    await checkout(payments, items=[LineItem("J1", "湯呑み", 1200, "JPY", 2)])
    [unit] = next(iter(paypal_api.orders.values()))["purchase_units"]
    assert unit["amount"]["value"] == "2400" and unit["items"][0]["unit_amount"]["value"] == "1200"


async def test_one_token_for_concurrent_calls_and_a_new_one_after_401(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    links = await asyncio.gather(*(checkout(payments, key=f"k{i}") for i in range(5)))
    assert len({link.provider_id for link in links}) == 5
    assert paypal_api.token_requests == 1  # single flight
    paypal_api.expire_tokens()  # PayPal no longer takes the cached token
    await checkout(payments, key="k-after")
    assert paypal_api.token_requests == 2
    statuses = [r.status for r in api_requests(paypal_api, "/v2/checkout/orders")[-2:]]
    assert statuses == [401, 200]  # refused once, fetched a token, tried again


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_rate_limits_and_outages_are_transient_and_retried_with_the_same_key(
    payments: PayPalPayments, paypal_api: FakePayPalAPI, status: int
) -> None:
    paypal_api.fail_next(1, status)
    with pytest.raises(TransientError, match=str(status)) as err:
        await checkout(payments)
    assert err.value.retry_after == 1.0  # PayPal's Retry-After is honoured
    link = await checkout(payments)  # the caller's retry, with the same key
    creates = api_requests(paypal_api, "/v2/checkout/orders")
    assert {r.headers["PayPal-Request-Id"] for r in creates} == {"checkout-HB01"}
    assert [r.status for r in creates] == [status, 200]
    assert list(paypal_api.orders) == [link.provider_id]


async def test_revoked_credentials_are_permanent(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    await checkout(payments)
    paypal_api.revoke()
    with pytest.raises(PermanentError, match="invalid_client"):
        await checkout(payments, key="k2")
    assert len(paypal_api.orders) == 1


async def test_validation_errors_are_permanent_with_paypal_issue(
    payments: PayPalPayments,
) -> None:
    with pytest.raises(PermanentError, match=r"422 UNPROCESSABLE_ENTITY \[ORDER_NOT_APPROVED\]"):
        await payments.capture((await checkout(payments)).provider_id, idempotency_key="c1")
    with pytest.raises(PermanentError, match="not a PayPal id"):
        await payments.refund("../../v1/oauth2/token", idempotency_key="r0")


async def test_capture_and_refunds(payments: PayPalPayments, paypal_api: FakePayPalAPI) -> None:
    link = await checkout(payments)
    paypal_api.approve(link.provider_id)
    capture = await payments.capture(link.provider_id, idempotency_key="capture-1")
    assert paypal_api.captures[capture]["status"] == "COMPLETED"
    # the same request id: PayPal answers with the same capture, nothing taken twice
    assert await payments.capture(link.provider_id, idempotency_key="capture-1") == capture
    # an answer lost and a different key: ORDER_ALREADY_CAPTURED counts as done
    assert await payments.capture(link.provider_id, idempotency_key="capture-2") == ""
    assert len(paypal_api.captures) == 1
    [first, *_] = api_requests(paypal_api, "/capture")
    assert first.headers["PayPal-Request-Id"] == "capture-1"

    part = await payments.refund(capture, 1250, reason="una taza rota", idempotency_key="r1")
    assert (part.status, part.amount_minor) == ("COMPLETED", 1250)
    refund_request = api_requests(paypal_api, "/refund")[-1]
    assert refund_request.body == {
        "note_to_payer": "una taza rota",
        "amount": {"currency_code": "EUR", "value": "12.50"},
    }
    assert refund_request.headers["PayPal-Request-Id"] == "r1"
    assert await payments.refund(capture, 1250, idempotency_key="r1") == part  # replayed
    rest = await payments.refund(capture, idempotency_key="r2")
    assert rest.amount_minor == 6490 - 1250 and len(paypal_api.refunds) == 2
    with pytest.raises(PermanentError, match="CAPTURE_FULLY_REFUNDED"):
        await payments.refund(capture, idempotency_key="r3")
    with pytest.raises(PermanentError, match="subscription"):
        await payments.refund("I-BW452GLLEP1G", idempotency_key="r4")


async def test_recurring_items_make_a_subscription_with_the_catalog_plan(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    club = LineItem("S1", "club del café", 900, "EUR", recurring_interval="month")
    link = await checkout(payments, items=[club], customer_email="lucia@example.com")
    [sub] = paypal_api.subscriptions.values()
    assert link.provider_id == sub["id"] and sub["id"].startswith("I-")
    assert link.url.startswith("https://www.sandbox.paypal.com/webapps/billing/subscriptions")
    [create] = api_requests(paypal_api, "/v1/billing/subscriptions")
    assert create.headers["PayPal-Request-Id"] == "checkout-HB01"
    assert create.body["plan_id"] == "P-5ML4271244454362WXNWU5NQ"
    assert create.body["custom_id"] == "HB01"
    assert create.body["subscriber"] == {"email_address": "lucia@example.com"}
    with pytest.raises(PermanentError, match="no PayPal plan"):
        await checkout(payments, key="k2", items=[LineItem("S9", "x", 100, "EUR", 1, "year")])

    activated = await payments.parse_webhook(*paypal_api.signed(paypal_api.activate(sub["id"])))
    sale = await payments.parse_webhook(*paypal_api.signed(paypal_api.sale(sub["id"])))
    for event in (activated, sale):
        assert event is not None
        assert (event.type, event.order_id, event.provider_ref) == ("paid", "HB01", sub["id"])
        assert (event.amount_minor, event.currency) == (900, "EUR")


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="PAYPAL_CLIENT_ID.*PAYPAL_CLIENT_SECRET.*tolerance"):
        PayPalPayments(client_id="", client_secret="", tolerance_s=0)


def test_providers_are_registered_by_name() -> None:
    assert PAYMENTS.names == ("stripe", "paypal")
    assert PAYMENTS.load("paypal", Payments) is PayPalPayments


# -- webhooks: decoding and verification --------------------------------------------


async def test_signed_events_become_payment_events(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    link = await checkout(payments)
    approved = await payments.parse_webhook(
        *paypal_api.signed(paypal_api.approve(link.provider_id))
    )
    assert approved is not None
    assert (approved.type, approved.order_id, approved.conversation_id) == (
        "approved",
        "HB01",
        "+34611222333",
    )
    assert (approved.provider_ref, approved.amount_minor) == (link.provider_id, 6490)
    assert approved.raw_type == "CHECKOUT.ORDER.APPROVED"

    capture = await payments.capture(link.provider_id, idempotency_key="c")
    paid = await payments.parse_webhook(*paypal_api.signed(paypal_api.captured(link.provider_id)))
    assert paid is not None and (paid.type, paid.order_id, paid.provider_ref) == (
        "paid",
        "HB01",
        capture,
    )
    assert (paid.amount_minor, paid.currency) == (6490, "EUR")

    await payments.refund(capture, idempotency_key="r")
    refunded = await payments.parse_webhook(*paypal_api.signed(paypal_api.refunded(capture)))
    assert refunded is not None and (refunded.type, refunded.provider_ref) == ("refunded", capture)
    assert refunded.amount_minor == 6490

    other = await checkout(payments, key="k2", order_id="HB02")
    voided = await payments.parse_webhook(*paypal_api.signed(paypal_api.void(other.provider_id)))
    assert voided is not None and (voided.type, voided.order_id) == ("expired", "HB02")

    ignored = paypal_api.event("CUSTOMER.DISPUTE.CREATED", {"id": "PP-D-1"}, "dispute")
    assert await payments.parse_webhook(*paypal_api.signed(ignored)) is None


async def test_deliveries_that_are_not_provably_paypals_are_refused(
    payments: PayPalPayments, paypal_api: FakePayPalAPI
) -> None:
    event = paypal_api.approve((await checkout(payments)).provider_id)
    body, headers = paypal_api.signed(event)
    assert await payments.parse_webhook(body, headers) is not None
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    refused = {
        "forged": paypal_api.signed(event, key=other_key),
        "another webhook": paypal_api.signed(event, webhook_id="9XX00000000000000000000"),
        "stale": paypal_api.signed(event, sent=old),
        "not paypal's host": paypal_api.signed(event, cert_url="https://paypal.example.com/c"),
        "paypal over http": paypal_api.signed(event, cert_url="http://api.paypal.com/cert"),
        "lookalike host": paypal_api.signed(event, cert_url="https://api.paypal.com.evil.io/c"),
        "tampered body": (body.replace(b"HB01", b"HB02"), headers),
        "no signature": (
            body,
            {k: v for k, v in headers.items() if k != "PAYPAL-TRANSMISSION-SIG"},
        ),
        "no headers": (body, {"Content-Type": "application/json"}),
        "other algorithm": (body, headers | {"PAYPAL-AUTH-ALGO": "SHA1withRSA"}),
    }
    for name, (b, h) in refused.items():
        with pytest.raises(WebhookSignatureError):
            await payments.parse_webhook(b, h)
            pytest.fail(f"{name} was accepted")
    unconfigured = adapter(paypal_api, webhook_id="")
    assert unconfigured.webhook_missing() == ["PAYPAL_WEBHOOK_ID"]
    with pytest.raises(WebhookSignatureError, match="PAYPAL_WEBHOOK_ID"):
        await unconfigured.parse_webhook(body, headers)
    await unconfigured.close()


# -- the shop, end to end -------------------------------------------------------------


class PayPalShop(Shop):
    paypal: FakePayPalAPI

    async def paypal_webhook(self, event: dict[str, Any], **kw: Any) -> Any:
        body, headers = self.paypal.signed(event, **kw)
        return await self.client.post("/webhooks/paypal/webhook", data=body, headers=headers)

    async def paypal_webhook_and_wait(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        before = len(self.graph.sent)
        resp = await self.paypal_webhook(event)
        assert resp.status == 200, await resp.text()
        assert await self.runtime.dispatcher.wait_idle(60)
        return [m for m in self.graph.sent[before:] if m["to"] == USER]


def paypal_env(graph_url: str, paypal_url: str, **extra: str) -> dict[str, str]:
    return (
        whatsapp_env(graph_url)
        | {
            "HABLA_PAYMENTS": "paypal",
            "PAYPAL_CLIENT_ID": CLIENT_ID,
            "PAYPAL_CLIENT_SECRET": SECRET,
            "PAYPAL_WEBHOOK_ID": WEBHOOK_ID,
            "HABLA_PAYPAL_API_BASE": paypal_url,
            "HABLA_OUTBOX_BACKOFF_S": "0.05",
            "HABLA_ADMIN_TOKEN": ADMIN,
        }
        | extra
    )


async def make_shop(
    make_server: ServerFactory,
    graph: FakeGraphAPI,
    paypal: FakePayPalAPI,
    stripe: FakeStripeAPI | None = None,
    **env: str,
) -> PayPalShop:
    client, runtime = await make_server(env=paypal_env(graph.url, paypal.url, **env))
    shop = PayPalShop(
        client, runtime, graph, stripe or FakeStripeAPI(STRIPE_KEY), FakeHubSpotAPI("x")
    )
    shop.paypal = paypal
    return shop


@pytest.fixture
async def shop(
    make_server: ServerFactory, graph_api: FakeGraphAPI, paypal_api: FakePayPalAPI
) -> PayPalShop:
    return await make_shop(make_server, graph_api, paypal_api)


async def test_paid_through_paypal_over_whatsapp_in_spanish(shop: PayPalShop) -> None:
    order_id, url = await shop.buy_hoodie()
    [order] = shop.paypal.orders.values()
    assert url == f"https://www.sandbox.paypal.com/checkoutnow?token={order['id']}"
    [unit] = order["purchase_units"]
    assert (unit["custom_id"], unit["reference_id"]) == (order_id, "+" + USER)
    assert unit["amount"]["value"] == "39.90" and unit["amount"]["currency_code"] == "EUR"
    [create] = api_requests(shop.paypal, "/v2/checkout/orders")
    assert create.headers["PayPal-Request-Id"] == f"checkout-{order_id}"

    # the buyer approves; PayPal is briefly down when habla captures, and delivers
    # the approval twice: one capture, with one request id, retried by the outbox
    shop.paypal.fail_next(1, 503)
    approved = shop.paypal.approve(order["id"])
    for _ in range(2):
        resp = await shop.paypal_webhook(approved)
        assert resp.status == 200, await resp.text()

    async def captured() -> bool:
        return bool(shop.paypal.captures)

    await eventually(captured)
    captures = api_requests(shop.paypal, "/capture")
    assert [r.status for r in captures] == [503, 201]
    assert {r.headers["PayPal-Request-Id"] for r in captures} == {f"capture-{approved['id']}"}
    [capture_id] = shop.paypal.captures

    # PayPal reports the capture, twice: exactly one confirmation in the chat
    completed = shop.paypal.captured(order["id"])
    replies = await shop.paypal_webhook_and_wait(completed)
    assert await shop.paypal_webhook_and_wait(completed) == []
    [paid] = texts(replies)
    assert paid.startswith("¡Pago recibido! Pedido " + order_id) and "39,90 EUR" in paid
    assert [t for t in texts(shop.graph.sent) if t.startswith("¡Pago recibido!")] == [paid]

    stored = await shop.admin(f"/api/orders/{order_id}")
    assert (stored["status"], stored["payment_provider"]) == ("paid", "paypal")
    assert stored["payment_ref"] == capture_id
    assert [h["status"] for h in stored["history"]] == ["created", "link_sent", "paid"]
    jobs = {j["kind"]: j for j in (await shop.admin("/api/outbox"))["jobs"]}
    assert jobs["payments.capture"]["status"] == "done"
    assert jobs["payments.capture"]["result"] == {"capture": capture_id, "provider": "paypal"}
    assert jobs["payments.checkout"]["result"]["provider"] == "paypal"

    # a refund goes to PayPal, with the capture and a request id
    [asked] = texts(await shop.say("quiero que me devuelvan el dinero"))
    assert asked.startswith("He pedido el reembolso de 39,90 EUR del pedido " + order_id)
    [refund] = api_requests(shop.paypal, f"/v2/payments/captures/{capture_id}/refund")
    assert refund.headers["PayPal-Request-Id"] == f"refund-{order_id}"
    [done] = texts(await shop.paypal_webhook_and_wait(shop.paypal.refunded(capture_id)))
    assert done.startswith("Te hemos devuelto 39,90 EUR del pedido " + order_id)


async def test_a_declined_capture_is_told_and_a_new_approval_is_captured(
    shop: PayPalShop,
) -> None:
    order_id, url = await shop.buy_hoodie()
    [order] = shop.paypal.orders.values()
    shop.paypal.declines = 1
    before = len(shop.graph.sent)
    first = shop.paypal.approve(order["id"])
    assert (await shop.paypal_webhook(first)).status == 200

    async def told() -> bool:
        await shop.runtime.dispatcher.wait_idle(60)
        return any("no se ha completado" in t for t in texts(shop.graph.sent[before:]))

    await eventually(told)
    [failed] = [t for t in texts(shop.graph.sent[before:]) if "no se ha completado" in t]
    assert failed.startswith(f"El pago del pedido {order_id} no se ha completado") and url in failed
    [job] = (await shop.admin("/api/outbox?status=failed"))["jobs"]
    assert job["kind"] == "payments.capture" and "INSTRUMENT_DECLINED" in job["last_error"]

    # the buyer approves again with another card: a new capture, and the order is paid
    second = shop.paypal.approve(order["id"])
    assert (await shop.paypal_webhook(second)).status == 200

    async def captured() -> bool:
        return bool(shop.paypal.captures)

    await eventually(captured)
    [paid] = texts(await shop.paypal_webhook_and_wait(shop.paypal.captured(order["id"])))
    assert paid.startswith("¡Pago recibido! Pedido " + order_id)
    stored = await shop.admin(f"/api/orders/{order_id}")
    assert [h["status"] for h in stored["history"]] == ["created", "link_sent", "failed", "paid"]


async def test_forged_stale_or_unsigned_paypal_webhooks_change_nothing(
    shop: PayPalShop,
) -> None:
    order_id, _ = await shop.buy_hoodie()
    fake_capture = {
        "id": "3C679366HH908993F",
        "status": "COMPLETED",
        "amount": {"currency_code": "EUR", "value": "39.90"},
        "custom_id": order_id,
    }
    event = shop.paypal.event("PAYMENT.CAPTURE.COMPLETED", fake_capture, "capture")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    body, headers = shop.paypal.signed(event)
    responses = [
        await shop.paypal_webhook(event, key=other_key),
        await shop.paypal_webhook(event, cert_url="https://evil.example.com/cert.pem"),
        await shop.paypal_webhook(event, sent=old),
        await shop.client.post("/webhooks/paypal/webhook", data=body),
    ]
    assert [r.status for r in responses] == [400, 400, 400, 400]
    stored = await shop.admin(f"/api/orders/{order_id}")
    assert stored["status"] == "link_sent" and shop.paypal.captures == {}
    assert await shop.runtime.dispatcher.wait_idle(60)
    assert not any(t.startswith("¡Pago recibido!") for t in texts(shop.graph.sent))


async def test_without_a_webhook_id_the_paypal_webhook_is_closed(
    make_server: ServerFactory, graph_api: FakeGraphAPI, paypal_api: FakePayPalAPI
) -> None:
    shop = await make_shop(make_server, graph_api, paypal_api, PAYPAL_WEBHOOK_ID="")
    body, headers = paypal_api.signed(paypal_api.event("X.Y", {"id": "1"}, "x"))
    resp = await shop.client.post("/webhooks/paypal/webhook", data=body, headers=headers)
    assert resp.status == 403 and "PAYPAL_WEBHOOK_ID" in await resp.text()
    assert shop.runtime.closed_endpoints["paypal"] == ["PAYPAL_WEBHOOK_ID"]
    # stripe is not configured: its webhook is closed too, and says how to open it
    assert shop.runtime.closed_endpoints["stripe"][0] == "HABLA_PAYMENTS=paypal,stripe"


async def test_revoked_paypal_credentials_show_as_failed_to_the_operator(
    shop: PayPalShop,
) -> None:
    shop.paypal.revoke()
    [confirm] = await shop.say("quiero comprar una taza")
    assert "12,50 EUR" in confirm["interactive"]["body"]["text"]
    await shop.tap("/affirm", "Sí")
    [failed] = (await shop.admin("/api/outbox?status=failed"))["jobs"]
    assert failed["kind"] == "payments.checkout" and failed["status"] == "failed"
    assert failed["last_error"].startswith("paypal access token: 401 invalid_client")
    assert SECRET not in failed["last_error"] and CLIENT_ID not in failed["last_error"]
    assert shop.paypal.orders == {}


async def test_both_providers_the_catalog_chooses(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    paypal_api: FakePayPalAPI,
    stripe_api: FakeStripeAPI,
    tmp_path: Path,
) -> None:
    catalog = yaml.safe_load((PROJECT / "catalog.yml").read_text())
    for product in catalog["products"]:
        if product["sku"] == "A2":
            product["payments"] = "paypal"  # the hoodie is sold through PayPal
    path = tmp_path / "catalog.yml"
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
    shop = await make_shop(
        make_server,
        graph_api,
        paypal_api,
        stripe_api,
        HABLA_PAYMENTS="stripe,paypal",
        HABLA_CATALOG=str(path),
        STRIPE_API_KEY=STRIPE_KEY,
        STRIPE_WEBHOOK_SECRET=WHSEC,
        HABLA_STRIPE_API_BASE=stripe_api.url,
    )
    hoodie_id, hoodie_url = await shop.buy_hoodie()
    assert hoodie_url.startswith("https://www.sandbox.paypal.com/checkoutnow")
    [confirm] = await shop.say("quiero comprar una taza")
    [link] = texts(await shop.tap("/affirm", "Sí"))
    mug_id = link.split("pedido ", 1)[1].split(" ", 1)[0]
    assert "checkout.stripe.com" in link  # the default, first in HABLA_PAYMENTS
    assert len(paypal_api.orders) == 1 and len(stripe_api.sessions) == 1
    providers = {
        order_id: (await shop.admin(f"/api/orders/{order_id}"))["payment_provider"]
        for order_id in (hoodie_id, mug_id)
    }
    assert providers == {hoodie_id: "paypal", mug_id: "stripe"}
    # each provider's webhook is open, and a Stripe event finds its order
    session = next(iter(stripe_api.sessions.values()))
    [paid] = texts(await shop.webhook_and_wait(stripe_api.complete(session["id"])))
    assert paid.startswith("¡Pago recibido! Pedido " + mug_id)
    closed = shop.runtime.closed_endpoints
    assert "stripe" not in closed and "paypal" not in closed
