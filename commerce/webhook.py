"""``POST /webhooks/stripe/webhook``: payment events back into the conversation.

The ``Stripe-Signature`` is verified over the raw body with a tolerance window; a
missing or wrong one gets 400 and changes nothing (fail closed; without a signing
secret every request gets 403). An event id is processed once. A verified event
updates the order's status history, moves the CRM deal, and is pushed into the
buyer's conversation as an intent (``/payment_succeeded{"order_id": ...}``), so the
bot tells them, in their language and on the channel they used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from commerce.orders import Order
from commerce.payments.base import WebhookSignatureError
from commerce.service import Commerce
from runtime.messages import mask_phone

logger = logging.getLogger(__name__)

Notify = Callable[[Order, str, str], Awaitable[bool]]
"""(order, intent, event id) → whether the message was queued into the conversation."""


class PaymentWebhook:
    path = "/webhooks/stripe/webhook"

    def __init__(self, service: Commerce | None, notify: Notify) -> None:
        self.service, self.notify = service, notify

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.path, self.receive)]

    async def receive(self, request: web.Request) -> web.Response:
        service = self.service
        if service is None or service.payments is None:
            raise web.HTTPForbidden(text="payments are not configured")
        if not service.settings.commerce.stripe_webhook_secret:
            raise web.HTTPForbidden(text="STRIPE_WEBHOOK_SECRET is not set")
        body = await request.read()
        try:
            event = await service.payments.parse_webhook(body, request.headers)
        except WebhookSignatureError as e:
            logger.warning("stripe: rejected a webhook: %s", e)
            raise web.HTTPBadRequest(text="invalid signature") from e
        except (ValueError, json.JSONDecodeError) as e:
            raise web.HTTPBadRequest(text=f"bad payload: {e}") from e
        if event is None:  # a type habla does not act on
            return web.json_response({"received": True, "handled": False})
        outcome = await service.handle_payment_event(event)
        if outcome is not None:
            order, intent = outcome
            queued = await self.notify(order, intent, event.event_id)
            logger.info(
                "stripe: %s for order %s (%s); user %s %s",
                event.raw_type,
                order.order_id,
                order.status,
                mask_phone(order.conversation_id),
                "notified" if queued else "not reachable",
            )
        return web.json_response({"received": True, "handled": outcome is not None})
