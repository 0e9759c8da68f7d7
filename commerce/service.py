"""Commerce in the middle of a conversation: orders, payment links, CRM records.

:class:`Commerce` is what the built-in actions (``actions/commerce.py``) and the payment
webhooks use. Every provider write goes through the outbox, so an outage delays it
but never loses it, and every write is idempotent:

- an order's id comes from the conversation and the message that confirmed it, so a
  retried action finds the same order instead of creating a second one;
- the Checkout Session is created with the order id as Stripe's idempotency key, so a
  retry after a timeout gets the same session (and the buyer one payment link);
- CRM records are upserted by phone/e-mail and by the order id.

Several payment providers may be configured (``HABLA_PAYMENTS=stripe,paypal``): an
order is paid with the one its catalog product names (``payments: paypal``), else the
first; the order records it (``metadata["payments"]``), so its refund and its
webhooks go to the provider it was created with. The bot does not ask the buyer to
choose. A provider that only takes the money when habla asks (PayPal) sends an
"approved" event: the capture is a job in the outbox (stored before the webhook
answers, run at once by the server's retry loop, retried while the provider is down,
with the same idempotency key), and the provider's "completed" event makes it paid.

Built by the composition root (``habla/wiring.py`` ``build_commerce``) in the server
and in each engine worker, and handed to the actions that declare a ``commerce``
attribute (``actions/commerce.py``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from commerce.catalog import Catalog, Product, display_name, from_minor, load_catalog
from commerce.crm.base import CRM, Contact, Deal
from commerce.orders import Order, OrderStore, TransitionRefused
from commerce.outbox import Job, JobStore, Outbox
from commerce.payments.base import LineItem, PaymentEvent, Payments
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings
from runtime.sqlite import SQLite

logger = logging.getLogger(__name__)

EVENT_INTENTS = {
    "paid": "payment_succeeded",
    "failed": "payment_failed",
    "refunded": "payment_refunded",
    "expired": "payment_expired",
}
ORDER_STATUS = {"paid": "paid", "failed": "failed", "refunded": "refunded", "expired": "expired"}


@dataclass(frozen=True)
class Customer:
    """Who is buying, and where to answer them (from the conversation)."""

    conversation_id: str
    channel: str
    phone: str = ""
    email: str = ""
    name: str = ""
    language: str = ""
    reply_to: str = ""
    reply_from: str = ""
    on_call: str = ""
    """The call channel the customer is speaking on, when written messages (a payment
    link) go to ``channel`` instead, or ``channel`` itself when they cannot be sent."""

    @property
    def can_receive_messages(self) -> bool:
        return self.on_call != self.channel

    def contact(self) -> Contact:
        first, _, last = self.name.partition(" ")
        return Contact(
            phone=self.phone,
            email=self.email,
            first_name=first,
            last_name=last,
            language=self.language,
        )


def order_id_for(conversation_id: str, confirmation: str, sku: str) -> str:
    """A stable order id for one confirmation (a retried action gets the same one)."""
    digest = hashlib.sha256(f"{conversation_id}|{confirmation}|{sku}".encode()).hexdigest()
    return "HB" + digest[:10].upper()


class Commerce:
    def __init__(
        self,
        settings: Settings,
        db: SQLite,
        *,
        crm: CRM | None = None,
        payments: Payments | Sequence[Payments] | None = None,
        orders: OrderStore | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        """``payments``: one provider, or several (the first is the default);
        ``jobs``: where the outbox keeps its writes (default: the SQLite file)."""
        c = settings.commerce
        self.settings = settings
        self.db = db
        self.crm = crm
        several = [payments] if isinstance(payments, Payments) else list(payments or ())
        self.providers: dict[str, Payments] = {p.name: p for p in several}
        """The configured payment providers by name (``Payments.name``)."""
        self.payments = several[0] if several else None
        """The default payment provider."""
        self._orders = orders
        self.outbox = Outbox(
            jobs or db, max_attempts=c.outbox_max_attempts, backoff_s=c.outbox_backoff_s
        )
        self.outbox.register("payments.checkout", self._checkout)
        self.outbox.register("payments.refund", self._refund)
        self.outbox.register("payments.capture", self._capture)
        self.outbox.register("crm.contact", self._crm_contact)
        self.outbox.register("crm.order", self._crm_order)
        self.outbox.register("crm.deal_stage", self._crm_deal_stage)
        self.outbox.register("crm.note", self._crm_note)
        self.outbox.register("crm.lead", self._crm_lead)
        self.outbox.register("conversation.notify", self._notify)
        if crm is not None:
            self.outbox.providers["crm"] = crm.name
        if self.payments is not None:
            self.outbox.providers["payments"] = self.payments.name
        self.notifier: Callable[[Order, str, str], Awaitable[bool]] | None = None
        """Starts a turn about an order in its conversation (set by the server)."""

    @property
    def orders(self) -> OrderStore:
        if self._orders is None:
            raise RuntimeError("Commerce.start() was not awaited")
        return self._orders

    async def start(self, orders: OrderStore | None = None) -> None:
        """Open the stores and clients (the server starts the outbox's retry loop)."""
        if orders is not None:
            self._orders = orders
        if self._orders is None:
            raise RuntimeError("Commerce needs an order store (habla/wiring.py build_commerce)")
        await self.outbox.setup()
        for part in (self.crm, *self.providers.values()):
            if part is not None:
                await part.start()

    async def close(self) -> None:
        await self.outbox.close()
        for part in (self.crm, *self.providers.values()):
            if part is not None:
                await part.close()
        if self._orders is not None:
            await self._orders.close()

    def payments_for(self, name: str) -> Payments | None:
        """The configured payment provider called ``name`` (None when it is not)."""
        return self.providers.get(name)

    def provider_name(self, order: Order) -> str:
        """The payment provider the order was created with (older orders, which did not
        record it: the default)."""
        recorded = str(order.metadata.get("payments") or "")
        return recorded or (self.payments.name if self.payments is not None else "")

    def _provider(self, order: Order) -> Payments:
        name = self.provider_name(order)
        payments = self.providers.get(name)
        if payments is None:
            raise PermanentError(
                f"order {order.order_id}: payment provider {name!r} is not configured "
                "(HABLA_PAYMENTS)"
            )
        return payments

    def _choose_provider(self, product: Product) -> str:
        """The catalog's provider for the product when it is configured, else the first."""
        if product.payments and product.payments in self.providers:
            return product.payments
        if product.payments:
            logger.warning(
                "product %s: payment provider %r is not configured (HABLA_PAYMENTS); "
                "selling it with the default",
                product.sku,
                product.payments,
            )
        return self.payments.name if self.payments is not None else ""

    async def catalog(self) -> Catalog | None:
        return await load_catalog(self.settings.path(self.settings.commerce.catalog))

    # ---- orders and payments -------------------------------------------------------

    async def place_order(
        self, customer: Customer, product: Product, quantity: int, confirmation: str
    ) -> tuple[Order, str]:
        """Create (or find) the order and its payment link.

        Returns the order and ``link_sent`` (the link is in ``order.checkout_url``),
        ``pending`` (the payment provider is down: the link follows when it is back),
        ``failed`` (it refused) or ``unavailable`` (no payment provider configured).
        """
        catalog = await self.catalog()
        if catalog is None:
            raise PermanentError("the catalog cannot be read")
        unit = catalog.minor(product.price)
        order = Order(
            order_id=order_id_for(customer.conversation_id, confirmation, product.sku),
            conversation_id=customer.conversation_id,
            channel=customer.channel,
            address=customer.phone,
            language=customer.language,
            items=[
                {
                    "sku": product.sku,
                    "name": display_name(product, customer.language),
                    "qty": quantity,
                    "unit_amount_minor": unit,
                    "currency": catalog.currency,
                    "recurring": product.recurring,
                    "stripe_price": product.stripe_price,
                }
            ],
            amount_minor=unit * quantity,
            currency=catalog.currency,
            status="created",
            metadata={
                "reply_to": customer.reply_to,
                "reply_from": customer.reply_from,
                "email": customer.email,
                "name": customer.name,
                "payments": self._choose_provider(product),
            },
        )
        order, created = await self.orders.create(order)
        if not created and order.checkout_url:
            return order, "link_sent"
        if self.crm is not None:  # contact + open deal, in the background
            await self.outbox.enqueue(
                "crm.order",
                {"order_id": order.order_id},
                f"crm.order:{order.order_id}",
                customer.conversation_id,
            )
        if self.payments is None:
            return order, "unavailable"
        job = await self.outbox.submit(
            "payments.checkout",
            {"order_id": order.order_id, "provider": self.provider_name(order)},
            f"checkout:{order.order_id}",
            customer.conversation_id,
        )
        fresh = await self.orders.get(order.order_id) or order
        status = "link_sent" if job.status == "done" else job.status
        if status == "link_sent" and customer.on_call:
            await self.send_link(fresh)
        return fresh, status

    async def send_link(self, order: Order) -> None:
        """Write the payment link to the order's channel (a caller's WhatsApp): a turn of
        its own in the conversation, queued by the server's outbox (so an engine worker
        or an action server can ask for it, and it is sent once)."""
        await self.outbox.enqueue(
            "conversation.notify",
            {"order_id": order.order_id, "intent": "payment_link_ready"},
            f"link-message:{order.order_id}",
            order.conversation_id,
        )

    async def _notify(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.notifier is None:  # not the server process: its outbox loop sends it
            raise TransientError("only the server process starts conversation turns")
        order = await self.orders.get(payload["order_id"])
        if order is None:
            raise PermanentError(f"order {payload['order_id']} does not exist")
        key = f"{payload['intent']}:{order.order_id}"
        if not await self.notifier(order, payload["intent"], key):
            raise PermanentError(f"channel {order.channel!r} is not open")
        return {"channel": order.channel}

    async def _checkout(self, payload: dict[str, Any]) -> dict[str, Any]:
        order = await self.orders.get(payload["order_id"])
        if order is None:
            raise PermanentError(f"order {payload['order_id']} does not exist")
        payments = self._provider(order)
        if order.checkout_url:
            return {"url": order.checkout_url}
        items = [
            LineItem(
                sku=i["sku"],
                name=i["name"],
                unit_amount_minor=int(i["unit_amount_minor"]),
                currency=i["currency"],
                quantity=int(i["qty"]),
                recurring_interval=i.get("recurring", ""),
            )
            for i in order.items
        ]
        c = self.settings.commerce
        base = self.settings.public_base
        success = c.success_url or (f"{base}/shop/thanks" if base else "https://example.com/")
        link = await payments.create_checkout(
            order_id=order.order_id,
            conversation_id=order.conversation_id,
            items=items,
            customer_email=order.metadata.get("email", ""),
            success_url=success,
            cancel_url=success,
            idempotency_key=f"checkout-{order.order_id}",
        )
        await self.orders.update_status(
            order.order_id,
            "link_sent",
            "payment link created",
            payment_ref=link.provider_id,
            url=link.url,
        )
        return {"url": link.url, "session": link.provider_id, "provider": payments.name}

    async def handle_payment_event(self, event: PaymentEvent) -> tuple[Order, str] | None:
        """Apply a verified provider event once: the order and the intent to tell the user.

        The event is recorded as processed in the same write that changes the order, so
        a delivery that fails (the webhook answers 500) is applied when the provider
        retries it, and a duplicate of one that was applied changes and says nothing.
        """
        order = await self.orders.get(event.order_id) if event.order_id else None
        if order is None and event.provider_ref:
            order = await self.orders.find_by_payment_ref(event.provider_ref)
        if order is None:
            logger.warning("payment event %s: no order %r", event.event_id, event.order_id)
            return None
        if event.type == "approved":
            await self._approved(order, event)
            return None
        if (
            event.type == "expired"
            and order.payment_ref
            and event.provider_ref != order.payment_ref
        ):
            logger.info("order %s: an older checkout expired; ignored", order.order_id)
            return None
        note = f"{event.raw_type}" + (f": {event.reason}" if event.reason else "")
        try:
            updated = await self.orders.update_status(
                order.order_id,
                ORDER_STATUS[event.type],
                note,
                payment_ref=event.provider_ref or None,
                event_id=event.event_id,
            )
        except TransitionRefused as e:  # out of order (a late failure after the payment)
            logger.info("order %s: %s ignored (%s)", order.order_id, event.raw_type, e)
            return None
        if updated is None:
            logger.info("payment event %s already processed", event.event_id)
            return None
        if order.status == updated.status == "paid":
            # another event for the same payment (PayPal: the subscription's activation,
            # then its first sale; a renewal): recorded, nothing new to tell
            logger.info("order %s: %s for an order already paid", order.order_id, event.raw_type)
            return None
        stage = {"paid": "won", "refunded": "lost"}.get(event.type)
        if self.crm is not None and stage:
            await self.outbox.enqueue(
                "crm.deal_stage",
                {"order_id": order.order_id, "stage": stage},
                f"crm.{stage}:{order.order_id}",
                order.conversation_id,
            )
        return updated, EVENT_INTENTS[event.type]

    async def _approved(self, order: Order, event: PaymentEvent) -> None:
        """The buyer approved: store the capture for the outbox loop, which runs it at
        once; a transient failure is retried with the same idempotency key. Keyed by
        the approval event, so a redelivery captures nothing twice, while a buyer who
        approves again (another card, after a decline) gets a new capture; a second
        capture of a captured checkout is refused by the provider and counts as done."""
        if order.status in ("paid", "refunded"):
            logger.info(
                "order %s: %s after it was %s", order.order_id, event.raw_type, order.status
            )
            return
        await self.outbox.enqueue(
            "payments.capture",
            {
                "order_id": order.order_id,
                "provider": self.provider_name(order),
                "ref": event.provider_ref,
                "key": f"capture-{event.event_id}",
            },
            f"capture:{event.event_id}",
            order.conversation_id,
        )

    async def _capture(self, payload: dict[str, Any]) -> dict[str, Any]:
        order = await self.orders.get(payload["order_id"])
        if order is None:
            raise PermanentError(f"order {payload['order_id']} does not exist")
        if order.status in ("paid", "refunded"):
            return {"skipped": order.status}
        payments = self._provider(order)
        try:
            capture = await payments.capture(payload["ref"], idempotency_key=payload["key"])
        except PermanentError as e:  # refused (declined instrument, not approved...)
            try:
                await self.orders.update_status(order.order_id, "failed", f"capture refused: {e}")
            except TransitionRefused:
                pass
            else:
                await self.outbox.enqueue(
                    "conversation.notify",
                    {"order_id": order.order_id, "intent": "payment_failed"},
                    f"capture-failed:{payload['key']}",
                    order.conversation_id,
                )
            raise
        return {"capture": capture, "provider": payments.name}

    async def request_refund(self, order: Order, reason: str) -> str:
        """Ask the provider for a full refund: ``requested``, ``pending`` or ``failed``."""
        if self.payments_for(self.provider_name(order)) is None:
            return "failed"
        job = await self.outbox.submit(
            "payments.refund",
            {"order_id": order.order_id, "reason": reason, "provider": self.provider_name(order)},
            f"refund:{order.order_id}",
            order.conversation_id,
        )
        return "requested" if job.status == "done" else job.status

    async def _refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        order = await self.orders.get(payload["order_id"])
        if order is None or not order.payment_ref:
            raise PermanentError(f"order {payload['order_id']} has no payment to refund")
        payments = self._provider(order)
        # the adapter maps free text to the provider's reasons and keeps the words
        refund = await payments.refund(
            order.payment_ref,
            None,
            reason=payload.get("reason") or "requested_by_customer",
            idempotency_key=f"refund-{order.order_id}",
        )
        return {"refund": refund.provider_id, "status": refund.status, "provider": payments.name}

    # ---- CRM ---------------------------------------------------------------------

    async def save_contact(self, customer: Customer) -> Job | None:
        """Upsert the contact (None without a CRM)."""
        if self.crm is None:
            return None
        return await self.outbox.submit(
            "crm.contact",
            {"contact": _contact_json(customer.contact())},
            f"crm.contact:{customer.conversation_id}:{int(time.time() // 60)}",
            customer.conversation_id,
        )

    async def create_lead(self, customer: Customer, source: str) -> Job | None:
        if self.crm is None:
            return None
        ref = f"lead-{hashlib.sha256(customer.conversation_id.encode()).hexdigest()[:12]}"
        return await self.outbox.submit(
            "crm.lead",
            {"contact": _contact_json(customer.contact()), "source": source, "ref": ref},
            f"crm.lead:{ref}",
            customer.conversation_id,
        )

    async def log_conversation(self, customer: Customer, transcript: str, ref: str) -> Job | None:
        if self.crm is None:
            return None
        return await self.outbox.submit(
            "crm.note",
            {"contact": _contact_json(customer.contact()), "text": transcript, "ref": ref},
            f"crm.note:{ref}",
            customer.conversation_id,
        )

    def _need_crm(self) -> CRM:
        if self.crm is None:
            raise PermanentError("no CRM configured (HABLA_CRM)")
        return self.crm

    async def _crm_contact(self, payload: dict[str, Any]) -> dict[str, Any]:
        crm = self._need_crm()
        contact_id = await crm.upsert_contact(Contact(**payload["contact"]))
        return {"contact_id": contact_id, "provider": crm.name}

    async def _crm_lead(self, payload: dict[str, Any]) -> dict[str, Any]:
        crm = self._need_crm()
        lead_id = await crm.create_lead(
            Contact(**payload["contact"]), payload["source"], payload["ref"]
        )
        return {"lead_id": lead_id, "provider": crm.name}

    async def _crm_note(self, payload: dict[str, Any]) -> dict[str, Any]:
        crm = self._need_crm()
        contact_id = await crm.upsert_contact(Contact(**payload["contact"]))
        note_id = await crm.add_note(
            contact_id, payload["text"], payload["ref"], payload.get("deal_ref", "")
        )
        return {"contact_id": contact_id, "note_id": note_id, "provider": crm.name}

    async def _crm_order(self, payload: dict[str, Any]) -> dict[str, Any]:
        crm = self._need_crm()
        order = await self.orders.get(payload["order_id"])
        if order is None:
            raise PermanentError(f"order {payload['order_id']} does not exist")
        name = order.metadata.get("name", "")
        first, _, last = name.partition(" ")
        contact = Contact(
            phone=order.address,
            email=order.metadata.get("email", ""),
            first_name=first,
            last_name=last,
            language=order.language,
        )
        contact_id = await crm.upsert_contact(contact)
        title = ", ".join(f"{i['qty']} × {i['name']}" for i in order.items)
        stage = {"paid": "won", "refunded": "lost"}.get(order.status, "open")
        deal_id = await crm.upsert_deal(
            Deal(
                ref=order.order_id,
                name=f"{order.order_id}: {title}",
                amount=float(from_minor(order.amount_minor, order.currency)),
                currency=order.currency,
                stage=stage,
                contact_id=contact_id,
            )
        )
        return {"contact_id": contact_id, "deal_id": deal_id, "provider": crm.name}

    async def _crm_deal_stage(self, payload: dict[str, Any]) -> dict[str, Any]:
        crm = self._need_crm()
        # the deal is created by the crm.order job: make sure it exists (idempotent)
        created = await self._crm_order({"order_id": payload["order_id"]})
        deal_id = await crm.move_deal(payload["order_id"], payload["stage"])
        deal_id = deal_id or created["deal_id"]
        return {"deal_id": deal_id, "stage": payload["stage"], "provider": crm.name}


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "phone": contact.phone,
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "language": contact.language,
    }


__all__ = ["Commerce", "Customer", "EVENT_INTENTS", "Job", "TransientError"]
