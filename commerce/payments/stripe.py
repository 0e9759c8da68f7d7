"""Stripe Checkout through the official SDK's async client.

One Checkout Session per order: ``mode=payment``, or ``mode=subscription`` when any
line item recurs. Each line is a configured Stripe Price (``prices``: sku -> price id)
or inline ``price_data``. The order and conversation ids travel as metadata on the
session *and* on the object Stripe creates from it (``payment_intent_data.metadata``,
or ``subscription_data.metadata``): Stripe does not copy session metadata anywhere,
but it copies a PaymentIntent's metadata onto the Charge it creates when the intent
is confirmed, so ``charge.refunded`` carries the order id too.

Webhooks are verified with the SDK (HMAC-SHA256 over ``"{t}.{body}"``) and fail
closed; the timestamp tolerance is checked here against an injectable clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
import stripe

from commerce.payments.base import (
    CheckoutLink,
    EventType,
    LineItem,
    PaymentEvent,
    Payments,
    Refund,
    WebhookSignatureError,
    catalog_ids,
    check_items,
    header,
)
from runtime.errors import error_for_status
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings

# The SDK reports request timings to Stripe and writes a machine id under ~/.config by
# default; habla sends Stripe nothing it did not ask for.
stripe.enable_telemetry = False

if TYPE_CHECKING:
    from stripe.params import RefundCreateParams
    from stripe.params.checkout import SessionCreateParams

T = TypeVar("T")

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


class StripePayments(Payments):
    name = "stripe"

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        c = settings.commerce
        pairs = (
            ("STRIPE_API_KEY", c.stripe_key),
            ("STRIPE_WEBHOOK_SECRET", c.stripe_webhook_secret),
        )
        return [name for name, value in pairs if not value]

    @classmethod
    def from_settings(cls, settings: Settings) -> StripePayments:
        c = settings.commerce
        prices = catalog_ids(settings, "stripe_price")  # products sold at a Stripe Price
        return cls(
            prices=prices,
            api_key=c.stripe_key,
            webhook_secret=c.stripe_webhook_secret,
            api_base=c.stripe_api_base,
            tolerance_s=c.stripe_tolerance_s,
            timeout_s=settings.send.timeout_s,
        )

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str = "",
        api_base: str = "",
        prices: Mapping[str, str] | None = None,
        tolerance_s: int = 300,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = []
        if not api_key:
            problems.append("api_key (STRIPE_API_KEY) is empty")
        if tolerance_s <= 0:
            problems.append("tolerance_s must be positive (webhooks would never go stale)")
        if timeout_s <= 0:
            problems.append("timeout_s must be positive")
        if problems:
            raise ValueError("StripePayments: " + "; ".join(problems))
        self.webhook_secret = webhook_secret
        self.prices = dict(prices or {})
        self.tolerance_s = tolerance_s
        self.clock = clock
        # An injected session is the caller's to close; otherwise the SDK owns one.
        self.http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=timeout_s), session=session
        )
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self.http,
            max_network_retries=0,  # retries belong to the caller (same idempotency key)
        )

    def webhook_missing(self) -> list[str]:
        return [] if self.webhook_secret else ["STRIPE_WEBHOOK_SECRET"]

    async def close(self) -> None:
        await self.http.close_async()

    # -- API calls ------------------------------------------------------------------

    async def create_checkout(
        self,
        order_id: str,
        conversation_id: str,
        items: Sequence[LineItem],
        *,
        customer_email: str = "",
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        expires_at: float = 0,
    ) -> CheckoutLink:
        check_items(items)
        metadata = {"order_id": order_id, "conversation_id": conversation_id}
        subscription = any(i.recurring_interval for i in items)
        params: dict[str, Any] = {
            "mode": "subscription" if subscription else "payment",
            "line_items": [self._line(i) for i in items],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": order_id,
            "metadata": metadata,
        }
        params["subscription_data" if subscription else "payment_intent_data"] = {
            "metadata": metadata
        }
        if customer_email:
            params["customer_email"] = customer_email
        if expires_at:
            params["expires_at"] = int(expires_at)
        session = await self._call(
            "create checkout session",
            lambda: self.client.v1.checkout.sessions.create_async(
                cast("SessionCreateParams", params),
                options={"idempotency_key": idempotency_key},
            ),
        )
        if not session.url:
            raise PermanentError(f"stripe: checkout session {session.id} has no url")
        return CheckoutLink(session.id, session.url, float(session.expires_at or 0))

    def _line(self, item: LineItem) -> dict[str, Any]:
        price_id = self.prices.get(item.sku)
        if price_id:
            return {"price": price_id, "quantity": item.quantity}
        price_data: dict[str, Any] = {
            "currency": item.currency.lower(),
            "unit_amount": item.unit_amount_minor,
            "product_data": {"name": item.name, "metadata": {"sku": item.sku}},
        }
        if item.recurring_interval:
            price_data["recurring"] = {"interval": item.recurring_interval}
        return {"price_data": price_data, "quantity": item.quantity}

    async def refund(
        self,
        payment_ref: str,
        amount_minor: int | None = None,
        *,
        reason: str = "requested_by_customer",
        idempotency_key: str,
    ) -> Refund:
        if payment_ref.startswith("pi_"):
            target = "payment_intent"
        elif payment_ref.startswith(("ch_", "py_")):
            target = "charge"
        else:
            raise PermanentError(
                f"stripe: cannot refund {payment_ref!r}: expected a PaymentIntent (pi_) "
                "or Charge (ch_) id"
            )
        params: dict[str, Any] = {
            target: payment_ref,
            # Stripe takes one of three reasons; habla's own words go in metadata.
            "reason": reason if reason in REFUND_REASONS else "requested_by_customer",
            "metadata": {"reason_text": reason[:500]},
        }
        if amount_minor is not None:
            params["amount"] = amount_minor
        refund = await self._call(
            "refund",
            lambda: self.client.v1.refunds.create_async(
                cast("RefundCreateParams", params),
                options={"idempotency_key": idempotency_key},
            ),
        )
        return Refund(refund.id, refund.status or "", refund.amount)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except stripe.StripeError as e:
            raise map_error(what, e) from e
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # reading the body
            raise TransientError(f"stripe {what}: {type(e).__name__} {e}") from e

    # -- webhooks -------------------------------------------------------------------

    async def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentEvent | None:
        if not self.webhook_secret:
            raise WebhookSignatureError("no Stripe webhook signing secret is configured")
        signature = header(headers, "Stripe-Signature")
        if not signature:
            raise WebhookSignatureError("no Stripe-Signature header")
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookSignatureError("the body is not UTF-8") from None
        try:
            # tolerance=None: the signature only; the age is checked below on our clock
            stripe.WebhookSignature.verify_header(payload, signature, self.webhook_secret, None)
        except stripe.SignatureVerificationError as e:
            raise WebhookSignatureError(e.user_message or "bad signature") from None
        age = self.clock() - _timestamp(signature)
        if age > self.tolerance_s:
            raise WebhookSignatureError(
                f"signature timestamp is {age:.0f} s old (tolerance {self.tolerance_s} s)"
            )
        try:
            event = json.loads(payload)
            parse = EVENTS.get(str(event.get("type", "")))
            obj = (event.get("data") or {}).get("object")
            if parse is None or not isinstance(obj, dict):
                return None
            return parse(str(event["id"]), str(event["type"]), obj)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"stripe webhook: a signed but malformed event: {e!r}") from e


def map_error(what: str, e: stripe.StripeError) -> Exception:
    """TransientError when Stripe (or the network) says retrying may help."""
    status = e.http_status
    code = e.code or ""
    text = f"stripe {what}: {type(e).__name__} ({status or 'no response'}"
    text += f", {code}): " if code else "): "
    text += e.user_message or str(e)
    should_retry = header(e.headers or {}, "Stripe-Should-Retry")
    if isinstance(e, stripe.APIConnectionError) or should_retry == "true":
        return TransientError(text)
    if should_retry == "false" or isinstance(e, stripe.IdempotencyError):
        return PermanentError(text)
    if isinstance(e, stripe.RateLimitError):
        retry_after = header(e.headers or {}, "Retry-After")
        return TransientError(text, float(retry_after) if retry_after.isdigit() else None)
    if status is None or status == 409:  # 409: the same idempotency key is still running
        return TransientError(text)
    return error_for_status(status, text)


def _timestamp(signature: str) -> int:
    """The ``t=`` of a Stripe-Signature header that verify_header already accepted."""
    return int(next(p for p in signature.split(",") if p.startswith("t="))[2:])


def _meta(obj: Mapping[str, Any]) -> dict[str, str]:
    return obj.get("metadata") or {}


def _session(kind: EventType, reason: str = "") -> Callable[..., PaymentEvent]:
    def parse(event_id: str, raw_type: str, s: Mapping[str, Any]) -> PaymentEvent:
        ref = s["id"] if kind == "expired" else s.get("payment_intent") or s.get("subscription")
        return PaymentEvent(
            event_id=event_id,
            type=kind,
            order_id=_meta(s).get("order_id") or s.get("client_reference_id") or "",
            conversation_id=_meta(s).get("conversation_id", ""),
            amount_minor=int(s.get("amount_total") or 0),
            currency=str(s.get("currency") or "").upper(),
            provider_ref=str(ref or s["id"]),
            reason=reason,
            raw_type=raw_type,
        )

    return parse


def _completed(event_id: str, raw_type: str, s: Mapping[str, Any]) -> PaymentEvent | None:
    # Delayed methods (SEPA debit, bank transfer) complete "unpaid" and report later
    # with checkout.session.async_payment_succeeded or _failed.
    if s.get("payment_status") not in ("paid", "no_payment_required"):
        return None
    return _session("paid")(event_id, raw_type, s)


def _intent_failed(event_id: str, raw_type: str, pi: Mapping[str, Any]) -> PaymentEvent:
    error = pi.get("last_payment_error") or {}
    return PaymentEvent(
        event_id=event_id,
        type="failed",
        order_id=_meta(pi).get("order_id", ""),
        conversation_id=_meta(pi).get("conversation_id", ""),
        amount_minor=int(pi.get("amount") or 0),
        currency=str(pi.get("currency") or "").upper(),
        provider_ref=str(pi["id"]),
        reason=str(error.get("message") or error.get("code") or "payment failed"),
        raw_type=raw_type,
    )


def _charge_refunded(event_id: str, raw_type: str, charge: Mapping[str, Any]) -> PaymentEvent:
    return PaymentEvent(
        event_id=event_id,
        type="refunded",
        order_id=_meta(charge).get("order_id", ""),
        conversation_id=_meta(charge).get("conversation_id", ""),
        amount_minor=int(charge.get("amount_refunded") or 0),
        currency=str(charge.get("currency") or "").upper(),
        provider_ref=str(charge.get("payment_intent") or charge["id"]),
        reason="" if charge.get("refunded") else "partial",
        raw_type=raw_type,
    )


EVENTS: dict[str, Callable[[str, str, Mapping[str, Any]], PaymentEvent | None]] = {
    "checkout.session.completed": _completed,
    "checkout.session.async_payment_succeeded": _session("paid"),
    "checkout.session.async_payment_failed": _session("failed", "async payment failed"),
    "checkout.session.expired": _session("expired"),
    "payment_intent.payment_failed": _intent_failed,
    "charge.refunded": _charge_refunded,
}
