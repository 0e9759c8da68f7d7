"""``POST /webhooks/<provider>/webhook``: payment events back into the conversation.

One :class:`PaymentWebhook` per payment provider (``/webhooks/stripe/webhook``,
``/webhooks/paypal/webhook``), the same code for each: the provider's adapter
verifies the signature over the raw body (``Stripe-Signature`` with a tolerance
window; PayPal's certificate-signed transmission, as recent) and decodes the event; a
missing or wrong signature gets 400 and changes nothing (fail closed; without the
provider configured, or without its signing secret or webhook id, every request gets
403). An event id is processed once. A verified event
updates the order's status history, moves the CRM deal, and is pushed into the
buyer's conversation as an intent (``/payment_succeeded{"order_id": ...}``), so the
bot tells them, in their language and on the channel they used.

Status codes, in order (never 500): 403 without payments or a signing secret; 400
"invalid signature" for a missing, wrong or stale signature (nothing is decoded before
it is verified); 400 "bad payload" for a verified body that is not an event habla can
read: not JSON within :mod:`runtime.wire`'s bounds (nested over 64 deep, a number over
100 characters, NaN/Infinity), an ``id`` or ``type`` that is not a string, or an
order id, amount or other field of the wrong type or out of bounds; nothing is
processed then. Otherwise 200, ``handled`` saying whether an order changed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from commerce.orders import Order
from commerce.payments.base import PaymentEvent, Payments, WebhookSignatureError
from commerce.service import Commerce
from runtime.messages import mask_phone
from runtime.wire import PARSE_ERRORS, WireError, loads_bounded

logger = logging.getLogger(__name__)

Notify = Callable[[Order, str, str], Awaitable[bool]]
"""(order, intent, event id) → whether the message was queued into the conversation."""

MAX_ID_CHARS = 256
"""Event, order and conversation ids, provider references, currency and event type."""
MAX_REASON_CHARS = 2048
MAX_AMOUNT_MINOR = 10**15
"""No payment is 10 trillion of anything (Stripe allows 8 to 12 digits)."""


def event_problem(event: PaymentEvent) -> str:
    """What makes a decoded event unfit to act on (a field of the wrong type or
    unbounded), or "" when it is fine."""
    for name in ("event_id", "order_id", "conversation_id", "currency", "provider_ref"):
        value = getattr(event, name)
        if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
            return f"{name} is not a string of at most {MAX_ID_CHARS} characters"
    for name, limit in (("raw_type", MAX_ID_CHARS), ("reason", MAX_REASON_CHARS)):
        value = getattr(event, name)
        if not isinstance(value, str) or len(value) > limit:
            return f"{name} is not a string of at most {limit} characters"
    amount = event.amount_minor
    if isinstance(amount, bool) or not isinstance(amount, int) or abs(amount) > MAX_AMOUNT_MINOR:
        return "amount_minor is not an amount"
    return ""


def bad_payload(problem: str, provider: str = "stripe") -> web.HTTPBadRequest:
    problem = problem[:300]
    logger.warning("%s: refused a signed but malformed webhook: %s", provider, problem)
    return web.HTTPBadRequest(text=f"bad payload: {problem}")


def envelope_problem(body: bytes, type_field: str = "type") -> str:
    """The verified body held to the bounds every webhook is held to; "" when fine."""
    try:
        raw = loads_bounded(body)
    except WireError as e:
        return str(e)
    if not isinstance(raw, dict):
        return "the event is not a JSON object"
    if not isinstance(raw.get("id"), str) or not isinstance(raw.get(type_field), str):
        return f"the event's id or {type_field} is not a string"
    return ""


class PaymentWebhook:
    """The webhook of one payment provider (``provider``: its registry name)."""

    def __init__(self, service: Commerce | None, notify: Notify, provider: str = "stripe") -> None:
        self.service, self.notify, self.provider = service, notify, provider
        self.path = f"/webhooks/{provider}/webhook"

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.path, self.receive)]

    async def receive(self, request: web.Request) -> web.Response:
        service, provider = self.service, self.provider
        payments: Payments | None = service.payments_for(provider) if service else None
        if service is None or payments is None:
            raise web.HTTPForbidden(text=f"{provider} payments are not configured")
        missing = payments.webhook_missing()
        if missing:
            raise web.HTTPForbidden(text=f"{', '.join(missing)} is not set")
        body = await request.read()
        try:
            event = await payments.parse_webhook(body, request.headers)
        except WebhookSignatureError as e:
            logger.warning("%s: rejected a webhook: %s", provider, e)
            raise web.HTTPBadRequest(text="invalid signature") from e
        except PARSE_ERRORS as e:  # verified, but the adapter could not decode it
            raise bad_payload(f"{type(e).__name__}: {e}", provider) from e
        # verified: now hold it to the bounds, and the event to the types, habla needs
        problem = envelope_problem(body, payments.event_type_field) or (
            event_problem(event) if event else ""
        )
        if problem:
            raise bad_payload(problem, provider)
        if event is None:  # a type habla does not act on
            return web.json_response({"received": True, "handled": False})
        outcome = await service.handle_payment_event(event)
        if outcome is not None:
            order, intent = outcome
            queued = await self.notify(order, intent, event.event_id)
            logger.info(
                "%s: %s for order %s (%s); user %s %s",
                provider,
                event.raw_type,
                order.order_id,
                order.status,
                mask_phone(order.conversation_id),
                "notified" if queued else "not reachable",
            )
        return web.json_response({"received": True, "handled": outcome is not None})
