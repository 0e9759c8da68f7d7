"""Stripe payments: the official SDK against a local fake of the Stripe API, and the
webhook parser against deliveries signed like Stripe's (plus stripe-python's own
signature test vector)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe
import yaml

from commerce.payments import (
    LineItem,
    Payments,
    WebhookSignatureError,
)
from commerce.payments.stripe import StripePayments
from runtime.providers import PAYMENTS
from runtime.registry import UnknownProvider
from runtime.retry import PermanentError, TransientError
from tests.fakes.stripe_api import FakeStripeAPI, signature_header

PROJECT = Path(__file__).resolve().parents[1]
VECTOR = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "protocol"
    / "stripe-python"
    / "webhook_signature_vector.json"
)
KEY = "sk_test_51HablaFakeKey0000000000000000000000"
WHSEC = "whsec_habla_test_0123456789abcdef0123456789"
PRICES = {
    "price_1HablaHoodieMonthly": {"unit_amount": 990, "currency": "eur", "recurring": "month"}
}
URLS = {
    "success_url": "https://bot.example.com/shop/thanks",
    "cancel_url": "https://bot.example.com/shop/cancel",
}


def catalog_item(sku: str, quantity: int = 1, interval: str = "") -> LineItem:
    """A line item for a product of the example bot's catalog.yml."""
    catalog = yaml.safe_load((PROJECT / "catalog.yml").read_text())
    product = next(p for p in catalog["products"] if p["sku"] == sku)
    minor = int(Decimal(str(product["price"])) * 100)
    return LineItem(sku, product["name"], minor, catalog["currency"], quantity, interval)


@pytest.fixture
async def stripe_api() -> AsyncIterator[FakeStripeAPI]:
    fake = FakeStripeAPI(KEY, WHSEC, prices=PRICES)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def payments(stripe_api: FakeStripeAPI) -> AsyncIterator[StripePayments]:
    p = StripePayments(api_key=KEY, webhook_secret=WHSEC, api_base=stripe_api.url, timeout_s=5)
    yield p
    await p.close()


async def checkout(payments: StripePayments, key: str = "checkout-HB-0001", **kw: Any) -> Any:
    items = kw.pop("items", [catalog_item("A1", 2), catalog_item("A3")])
    return await payments.create_checkout(
        kw.pop("order_id", "HB-0001"),
        "whatsapp:+34600111222",
        items,
        idempotency_key=key,
        **(URLS | kw),
    )


async def test_checkout_session_carries_amounts_metadata_and_key(
    payments: StripePayments, stripe_api: FakeStripeAPI
) -> None:
    expires = int(time.time()) + 3600
    link = await checkout(payments, customer_email="ana@example.com", expires_at=expires)

    [session] = stripe_api.sessions.values()
    assert link.provider_id == session["id"] and link.provider_id.startswith("cs_test_")
    assert link.url == session["url"] and link.expires_at == expires
    assert (session["amount_total"], session["currency"], session["mode"]) == (
        5230,
        "eur",
        "payment",
    )
    meta = {"order_id": "HB-0001", "conversation_id": "whatsapp:+34600111222"}
    assert session["metadata"] == meta and session["client_reference_id"] == "HB-0001"

    [request] = stripe_api.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Idempotency-Key"] == "checkout-HB-0001"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Stripe-Version"]
    p = request.params
    assert p["line_items"] == [
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": "1990",
                "product_data": {"name": "t-shirt", "metadata": {"sku": "A1"}},
            },
            "quantity": "2",
        },
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": "1250",
                "product_data": {"name": "mug", "metadata": {"sku": "A3"}},
            },
            "quantity": "1",
        },
    ]
    assert p["payment_intent_data"] == {"metadata": meta}  # copied onto the charge later
    assert "subscription_data" not in p
    assert (p["customer_email"], p["expires_at"]) == ("ana@example.com", str(expires))
    assert (p["success_url"], p["cancel_url"]) == (URLS["success_url"], URLS["cancel_url"])

    # the fake serves the session back to the SDK as Stripe would
    fetched = await payments.client.v1.checkout.sessions.retrieve_async(link.provider_id)
    assert (fetched.status, fetched.amount_total) == ("open", 5230)
    assert fetched.metadata is not None and fetched.metadata.to_dict() == meta
    with pytest.raises(stripe.InvalidRequestError, match="No such checkout.session"):
        await payments.client.v1.checkout.sessions.retrieve_async("cs_test_missing")


async def test_a_retry_with_the_same_key_gets_the_same_session(
    payments: StripePayments, stripe_api: FakeStripeAPI
) -> None:
    first = await checkout(payments)
    again = await checkout(payments)
    assert again == first
    assert [r.replayed for r in stripe_api.requests] == [False, True]
    assert len(stripe_api.sessions) == 1

    # the same key for a different order is a programming error, not worth retrying
    with pytest.raises(PermanentError, match="IdempotencyError"):
        await checkout(payments, items=[catalog_item("A2")])
    assert len(stripe_api.sessions) == 1
    fresh = await checkout(payments, key="checkout-HB-0001-2")  # a new key: a new session
    assert fresh.provider_id != first.provider_id and len(stripe_api.sessions) == 2


async def test_timeout_then_retry_with_the_key_finds_the_session(
    stripe_api: FakeStripeAPI,
) -> None:
    slow = StripePayments(api_key=KEY, api_base=stripe_api.url, timeout_s=0.2)
    try:
        stripe_api.delays.append(0.8)  # Stripe is slow: the client gives up first
        with pytest.raises(TransientError):
            await checkout(slow)
        with pytest.raises(TransientError, match="409"):  # the first is still running
            await checkout(slow)
        await stripe_api.wait_answered(2)  # Stripe finishes the first one
        link = await checkout(slow)
    finally:
        await slow.close()
    assert len(stripe_api.sessions) == 1 and link.provider_id in stripe_api.sessions
    assert stripe_api.requests[-1].replayed


async def test_recurring_items_make_a_subscription(stripe_api: FakeStripeAPI) -> None:
    payments = StripePayments(
        api_key=KEY, api_base=stripe_api.url, prices={"A2": "price_1HablaHoodieMonthly"}
    )
    try:
        items = [catalog_item("A2", interval="month"), catalog_item("A3", interval="year")]
        link = await checkout(payments, items=items)
    finally:
        await payments.close()
    session = stripe_api.sessions[link.provider_id]
    assert session["mode"] == "subscription" and session["amount_total"] == 990 + 1250
    p = stripe_api.requests[-1].params
    assert p["line_items"][0] == {"price": "price_1HablaHoodieMonthly", "quantity": "1"}
    assert p["line_items"][1]["price_data"]["recurring"] == {"interval": "year"}
    assert p["subscription_data"] == {
        "metadata": {"order_id": "HB-0001", "conversation_id": "whatsapp:+34600111222"}
    }
    assert "payment_intent_data" not in p


async def test_refund_with_a_reason(payments: StripePayments, stripe_api: FakeStripeAPI) -> None:
    link = await checkout(payments)
    paid = await payments.parse_webhook(*stripe_api.signed(stripe_api.complete(link.provider_id)))
    assert paid is not None and paid.provider_ref.startswith("pi_")

    part = await payments.refund(
        paid.provider_ref, 1990, reason="one t-shirt was the wrong size", idempotency_key="r1"
    )
    assert (part.amount_minor, part.status) == (1990, "succeeded")
    p = stripe_api.requests[-1].params
    assert p == {
        "payment_intent": paid.provider_ref,
        "amount": "1990",
        "reason": "requested_by_customer",
        "metadata": {"reason_text": "one t-shirt was the wrong size"},
    }
    assert stripe_api.requests[-1].headers["Idempotency-Key"] == "r1"
    again = await payments.refund(
        paid.provider_ref, 1990, reason="one t-shirt was the wrong size", idempotency_key="r1"
    )
    assert again == part and len(stripe_api.refunds) == 1

    rest = await payments.refund(paid.provider_ref, reason="duplicate", idempotency_key="r2")
    assert rest.amount_minor == 5230 - 1990
    assert stripe_api.requests[-1].params["reason"] == "duplicate"
    with pytest.raises(PermanentError, match="charge_already_refunded"):
        await payments.refund(paid.provider_ref, idempotency_key="r3")
    with pytest.raises(PermanentError, match="PaymentIntent"):
        await payments.refund("sub_123", idempotency_key="r4")

    refunded = await payments.parse_webhook(
        *stripe_api.signed(stripe_api.refunded(paid.provider_ref))
    )
    assert refunded is not None
    assert (refunded.type, refunded.order_id, refunded.amount_minor, refunded.reason) == (
        "refunded",
        "HB-0001",
        5230,
        "",
    )


async def test_stripe_errors_map_to_transient_or_permanent(
    payments: StripePayments, stripe_api: FakeStripeAPI
) -> None:
    stripe_api.fail_next(1, 500)
    with pytest.raises(TransientError) as e:
        await checkout(payments)
    assert isinstance(e.value.__cause__, stripe.APIError)
    assert (await checkout(payments)).provider_id  # the edge failure saved nothing

    stripe_api.fail_next(1, 429, type="invalid_request_error", code="rate_limit")
    with pytest.raises(TransientError, match="RateLimitError"):
        await checkout(payments, key="k2")

    # a 500 after the endpoint began is saved under the key and replayed, like Stripe
    stripe_api.fail_next(1, 500, saved=True)
    for _ in range(2):
        with pytest.raises(TransientError):
            await checkout(payments, key="k3")
    assert stripe_api.requests[-1].replayed

    with pytest.raises(PermanentError, match="amount_too_small"):
        await checkout(payments, key="k4", items=[LineItem("X", "sticker", 10, "EUR")])
    with pytest.raises(PermanentError, match="resource_missing"):
        await payments.refund("pi_unknown", idempotency_key="k5")


async def test_a_bad_key_is_permanent(stripe_api: FakeStripeAPI) -> None:
    wrong = StripePayments(api_key="sk_test_wrong", api_base=stripe_api.url)
    try:
        with pytest.raises(PermanentError, match="AuthenticationError") as e:
            await checkout(wrong)
    finally:
        await wrong.close()
    assert isinstance(e.value.__cause__, stripe.AuthenticationError)
    assert stripe_api.sessions == {}


async def test_an_unreachable_api_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = StripePayments(api_key=KEY, api_base=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(TransientError, match="APIConnectionError"):
            await checkout(down)
    finally:
        await down.close()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="api_key"):
        StripePayments(api_key="", tolerance_s=0)
    with pytest.raises(ValueError, match="quantity"):
        LineItem("A1", "t-shirt", 1990, "EUR", quantity=0)
    with pytest.raises(ValueError, match="recurring_interval"):
        LineItem("A1", "t-shirt", 1990, "EUR", recurring_interval="fortnight")


async def test_mixed_currencies_are_refused(payments: StripePayments) -> None:
    with pytest.raises(PermanentError, match="mix currencies"):
        await checkout(payments, items=[catalog_item("A1"), LineItem("B", "mug", 1000, "USD")])


# -- webhooks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("play", "kind", "reason"),
    [
        ("complete", "paid", ""),
        ("decline", "failed", "Your card was declined."),
        ("delayed_then_fail", "failed", "async payment failed"),
        ("delayed_then_settle", "paid", ""),
        ("refund", "refunded", ""),
        ("partial_refund", "refunded", "partial"),
        ("expire", "expired", ""),
    ],
)
async def test_signed_events_become_payment_events(
    payments: StripePayments, stripe_api: FakeStripeAPI, play: str, kind: str, reason: str
) -> None:
    link = await checkout(payments)
    sid = link.provider_id
    if play == "complete":
        event = stripe_api.complete(sid)
    elif play == "decline":
        event = stripe_api.decline(sid)
    elif play.startswith("delayed"):
        pending = stripe_api.complete(sid, delayed=True)
        assert await payments.parse_webhook(*stripe_api.signed(pending)) is None  # unpaid yet
        event = stripe_api.settle(sid, succeeded=play.endswith("settle"))
    elif play == "expire":
        event = stripe_api.expire(sid)
    else:
        stripe_api.complete(sid)
        pi = stripe_api.sessions[sid]["payment_intent"]
        amount = 1000 if play == "partial_refund" else None
        await payments.refund(pi, amount, idempotency_key="refund-1")
        event = stripe_api.refunded(pi)

    parsed = await payments.parse_webhook(*stripe_api.signed(event))

    assert parsed is not None
    assert (parsed.type, parsed.event_id, parsed.raw_type) == (kind, event["id"], event["type"])
    assert (parsed.order_id, parsed.conversation_id) == ("HB-0001", "whatsapp:+34600111222")
    assert parsed.currency == "EUR" and parsed.reason == reason
    assert parsed.amount_minor == (1000 if play == "partial_refund" else 5230)
    expected_ref = sid if kind == "expired" else stripe_api.sessions[sid]["payment_intent"]
    assert parsed.provider_ref == expected_ref


async def test_a_paid_subscription_names_the_subscription(stripe_api: FakeStripeAPI) -> None:
    payments = StripePayments(api_key=KEY, webhook_secret=WHSEC, api_base=stripe_api.url)
    try:
        link = await checkout(payments, items=[catalog_item("A2", interval="month")])
        parsed = await payments.parse_webhook(
            *stripe_api.signed(stripe_api.complete(link.provider_id))
        )
    finally:
        await payments.close()
    assert parsed is not None and parsed.type == "paid" and parsed.order_id == "HB-0001"
    assert parsed.provider_ref == stripe_api.sessions[link.provider_id]["subscription"]


async def test_other_event_types_are_ignored(
    payments: StripePayments, stripe_api: FakeStripeAPI
) -> None:
    event = stripe_api.event("customer.created", {"id": "cus_1", "object": "customer"})
    assert await payments.parse_webhook(*stripe_api.signed(event)) is None

    # signed with our secret but not an event: a ValueError, not a crash deeper in
    now = int(time.time())
    for body in (b"not json", b'{"type": "charge.refunded", "data": {"object": {}}}'):
        headers = {"Stripe-Signature": signature_header(body, WHSEC, now)}
        with pytest.raises(ValueError, match="malformed"):
            await payments.parse_webhook(body, headers)


def _resign(headers: dict[str, str], body: bytes, secret: str, t: int) -> dict[str, str]:
    return headers | {"Stripe-Signature": signature_header(body, secret, t)}


@pytest.mark.parametrize("attack", ["tampered", "wrong_secret", "missing", "stale", "garbage"])
async def test_bad_signatures_fail_closed(
    payments: StripePayments, stripe_api: FakeStripeAPI, attack: str
) -> None:
    link = await checkout(payments)
    body, headers = stripe_api.signed(stripe_api.complete(link.provider_id))
    now = int(time.time())
    if attack == "tampered":
        body = body.replace(b'"amount_total": 5230', b'"amount_total": 1')
    elif attack == "wrong_secret":
        headers = _resign(headers, body, "whsec_someone_else", now)
    elif attack == "missing":
        del headers["Stripe-Signature"]
    elif attack == "stale":  # a replay of a delivery captured six minutes ago
        headers = _resign(headers, body, WHSEC, now - 360)
    else:
        headers["Stripe-Signature"] = "t=yesterday,v1=00"
    with pytest.raises(WebhookSignatureError):
        await payments.parse_webhook(body, headers)


async def test_header_names_are_case_insensitive_and_a_secret_is_required(
    payments: StripePayments, stripe_api: FakeStripeAPI
) -> None:
    link = await checkout(payments)
    body, headers = stripe_api.signed(stripe_api.expire(link.provider_id))
    lowered = {k.lower(): v for k, v in headers.items()}
    parsed = await payments.parse_webhook(body, lowered)
    assert parsed is not None and parsed.type == "expired"

    unconfigured = StripePayments(api_key=KEY, api_base=stripe_api.url)
    with pytest.raises(WebhookSignatureError, match="secret"):
        await unconfigured.parse_webhook(body, headers)
    await unconfigured.close()


async def test_stripe_python_signature_vector() -> None:
    vector = json.loads(VECTOR.read_text())
    body = vector["payload"].encode()
    headers = {"Stripe-Signature": vector["stripe_signature_header"]}
    assert (
        signature_header(body, vector["secret"], vector["timestamp"]) == headers["Stripe-Signature"]
    )

    at_the_time = StripePayments(
        api_key=KEY, webhook_secret=vector["secret"], clock=lambda: vector["timestamp"] + 10
    )
    # verified; a terminal.reader event without a type is nothing habla acts on
    assert await at_the_time.parse_webhook(body, headers) is None
    with pytest.raises(WebhookSignatureError):
        await at_the_time.parse_webhook(body.replace(b"rdr_123", b"rdr_124"), headers)
    await at_the_time.close()

    today = StripePayments(api_key=KEY, webhook_secret=vector["secret"])
    with pytest.raises(WebhookSignatureError, match="old"):  # 1970: far outside tolerance
        await today.parse_webhook(body, headers)
    await today.close()


def test_providers_are_registered_by_name() -> None:
    assert PAYMENTS.names == ("stripe", "paypal")
    assert PAYMENTS.load("stripe", Payments) is StripePayments
    assert PAYMENTS.load("commerce.payments.stripe.StripePayments", Payments) is StripePayments
    with pytest.raises(UnknownProvider, match="built-in: stripe, paypal"):
        PAYMENTS.load("adyen", Payments)
    with pytest.raises(UnknownProvider, match="is not a Payments"):
        PAYMENTS.load("commerce.payments.base.LineItem", Payments)
