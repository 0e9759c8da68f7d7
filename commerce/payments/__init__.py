"""Payment providers, registered by the name used in settings (``HABLA_PAYMENTS``) in
``runtime/providers.py`` (PAYMENTS)."""

from __future__ import annotations

from commerce.payments.base import (
    CheckoutLink,
    LineItem,
    PaymentEvent,
    Payments,
    Refund,
    WebhookSignatureError,
)

__all__ = [
    "CheckoutLink",
    "LineItem",
    "PaymentEvent",
    "Payments",
    "Refund",
    "WebhookSignatureError",
]
