"""Payments: one base class, adapters registered by the name used in settings.

An adapter creates a hosted checkout link for an order, refunds a payment and turns
the provider's signed webhook into a :class:`PaymentEvent`. Every write carries an
idempotency key chosen by habla, so a retry after a timeout never charges or refunds
twice. Errors are mapped once: :class:`TransientError` (429, 5xx, timeout, connection
refused) is worth retrying with the same key; :class:`PermanentError` (bad request,
bad credentials, declined card) is not. Webhooks fail closed: a missing, wrong or
stale signature raises :class:`WebhookSignatureError`.

Some providers (PayPal) do not take the money when the buyer approves: their webhook
then decodes to an ``approved`` event and habla asks for the money with
:meth:`Payments.capture` (``commerce/service.py`` runs it from the outbox); the
provider's own "completed" event makes the order paid.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import yaml

from commerce.catalog import read_catalog
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings, SettingsError

EventType = Literal["paid", "failed", "refunded", "expired", "approved"]
"""``approved``: the buyer approved; habla must :meth:`Payments.capture` the payment."""
INTERVALS = ("", "day", "week", "month", "year")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


class WebhookSignatureError(Exception):
    """The webhook is not provably from the provider (missing, wrong or stale
    signature, or no signing secret configured). Answer 400 and process nothing."""


@dataclass(frozen=True)
class LineItem:
    sku: str
    name: str
    unit_amount_minor: int  # in the currency's minor unit: 1990 is 19.90 EUR
    currency: str  # ISO 4217, "EUR"
    quantity: int = 1
    recurring_interval: str = ""  # "month"/"year" for subscriptions, "" for one-off

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if self.unit_amount_minor < 0:
            problems.append("unit_amount_minor is negative")
        if self.quantity < 1:
            problems.append("quantity is below 1")
        if not _CURRENCY.match(self.currency):
            problems.append(f"currency {self.currency!r} is not an ISO 4217 code")
        if self.recurring_interval not in INTERVALS:
            problems.append(
                f"recurring_interval {self.recurring_interval!r} is not one of "
                f"{', '.join(i for i in INTERVALS if i)}"
            )
        if problems:
            raise ValueError(f"line item {self.sku!r}: " + "; ".join(problems))

    @property
    def total_minor(self) -> int:
        return self.unit_amount_minor * self.quantity


@dataclass(frozen=True)
class CheckoutLink:
    provider_id: str  # the provider's checkout/session id (Stripe: cs_...)
    url: str  # where the buyer pays
    expires_at: float  # unix time; 0 when the provider does not say


@dataclass(frozen=True)
class Refund:
    provider_id: str  # Stripe: re_...
    status: str  # provider's status: "succeeded", "pending", "failed"...
    amount_minor: int


@dataclass(frozen=True)
class PaymentEvent:
    """One verified webhook, reduced to what habla's order book needs."""

    event_id: str  # the provider's event id: dedupe deliveries on it
    type: EventType
    order_id: str  # from the metadata habla attached; "" if the object carries none
    conversation_id: str
    amount_minor: int  # paid, attempted or refunded amount
    currency: str  # upper-case ISO 4217
    provider_ref: str  # the refundable payment (pi_...); for "expired" and "approved",
    # the checkout (Stripe session, PayPal order)
    reason: str  # failure message, "partial" for a partial refund, or ""
    raw_type: str  # the provider's event type, e.g. "checkout.session.completed"


class Payments(ABC):
    name: ClassVar[str]
    event_type_field: ClassVar[str] = "type"
    """The field of the provider's webhook envelope that names the event type (with
    ``id`` the event id): ``type`` for Stripe, ``event_type`` for PayPal."""

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        """Environment variables the payment webhook needs (named when it answers 403)."""
        return []

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Payments:
        """Build from the settings (registered in runtime/providers.py PAYMENTS)."""

    def webhook_missing(self) -> list[str]:
        """What this instance lacks to verify webhooks (the webhook answers 403)."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    @abstractmethod
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
        """A hosted payment page for ``items``, tagged with the order and conversation
        so the webhook can be matched back. The same ``idempotency_key`` with the same
        arguments returns the same link, so every argument, ``expires_at`` (unix time;
        0: the provider's default) included, must be the same on a retry."""

    @abstractmethod
    async def refund(
        self,
        payment_ref: str,
        amount_minor: int | None = None,
        *,
        reason: str = "requested_by_customer",
        idempotency_key: str,
    ) -> Refund:
        """Refund ``amount_minor`` (None: all of it) of the payment ``payment_ref``
        (:attr:`PaymentEvent.provider_ref` of its "paid" event)."""

    async def capture(self, checkout_ref: str, *, idempotency_key: str) -> str:
        """Take the money of an approved checkout (``checkout_ref``: the "approved"
        event's :attr:`PaymentEvent.provider_ref`); the provider's id of the payment.
        Idempotent: a retry with the same key takes nothing twice. Only providers whose
        webhooks decode to "approved" events need it."""
        raise PermanentError(f"{self.name}: payments are taken at checkout, not captured")

    @abstractmethod
    async def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentEvent | None:
        """Verify and decode one webhook delivery; None for event types habla ignores.

        Raises :class:`WebhookSignatureError` unless the signature is present, valid and
        recent, and ValueError for a verified body that is not a well-formed event.
        ``body`` must be the raw bytes as received."""


def catalog_ids(settings: Settings, field: str) -> dict[str, str]:
    """sku → the provider's id for it (``stripe_price``, ``paypal_plan``) for each product
    of the catalog that has one: read at start-up, before serving, so a broken catalog
    is a settings error."""
    try:
        catalog = read_catalog(settings.path(settings.commerce.catalog))
        return {p.sku: str(getattr(p, field)) for p in catalog.products if getattr(p, field)}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise SettingsError([f"commerce.catalog (HABLA_CATALOG): {e}"]) from e


def check_items(items: Sequence[LineItem]) -> None:
    """The checks every provider needs: something to sell, in one currency."""
    if not items:
        raise PermanentError("a checkout needs at least one line item")
    currencies = {i.currency.upper() for i in items}
    if len(currencies) > 1:
        raise PermanentError(f"line items mix currencies: {', '.join(sorted(currencies))}")


def header(headers: Mapping[str, str], name: str) -> str:
    """A header by case-insensitive name from any mapping ('' when absent)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


__all__ = [
    "CheckoutLink",
    "EventType",
    "LineItem",
    "PaymentEvent",
    "Payments",
    "PermanentError",
    "Refund",
    "TransientError",
    "WebhookSignatureError",
    "catalog_ids",
    "check_items",
    "header",
]
