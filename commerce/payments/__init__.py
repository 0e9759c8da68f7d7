"""Payment providers, registered by the name used in settings (``HABLA_PAYMENTS``)."""

from __future__ import annotations

import importlib

from commerce.payments.base import (
    CheckoutLink,
    LineItem,
    PaymentEvent,
    Payments,
    Refund,
    WebhookSignatureError,
)
from commerce.payments.stripe import StripePayments

PAYMENTS: dict[str, type[Payments]] = {c.name: c for c in (StripePayments,)}


def payments_class(name: str) -> type[Payments]:
    """A built-in provider by name, or a custom one by dotted path (``pkg.mod.Class``)."""
    if name in PAYMENTS:
        return PAYMENTS[name]
    if "." not in name:
        raise KeyError(f"unknown payments provider '{name}'; built-in: {', '.join(PAYMENTS)}")
    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Payments)):
        raise TypeError(f"{name} is not a Payments class")
    return cls


__all__ = [
    "PAYMENTS",
    "CheckoutLink",
    "LineItem",
    "PaymentEvent",
    "Payments",
    "Refund",
    "StripePayments",
    "WebhookSignatureError",
    "payments_class",
]
