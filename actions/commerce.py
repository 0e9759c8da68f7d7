"""Built-in commerce actions: sell, take payments and write to the CRM from stories.

Use them in rules, stories and forms like any custom action (list them under
``actions:`` in domain.yml). They read slots and the channel's phone number, talk to
the providers through habla's outbox (nothing is lost when a provider is down) and
set slots the dialogue can branch on:

    checkout_status  link_sent | pending (provider down: the link follows) | failed
    crm_status       success | pending (will retry) | failed
    order_id         the order the conversation is about
    asked            the question just asked: checkout | handoff | product | unset

Replies are domain responses (``utter_checkout_link``, ``utter_payment_succeeded``...)
with one variation per language, so every sentence stays authored in domain.yml.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.services import UsesCommerce
from commerce.catalog import Catalog, display_name, format_money
from commerce.orders import Order
from commerce.outbox import Job
from commerce.service import Commerce, Customer

logger = logging.getLogger(__name__)

CRM_STATUS = {"done": "success", "pending": "pending", "failed": "failed"}


def crm_status(job: Job | None) -> list[EventType]:
    """The slot the dialogue branches on (unset when no CRM is configured)."""
    return [SlotSet("crm_status", CRM_STATUS[job.status] if job else None)]


def language(tracker: Tracker) -> str:
    return str(tracker.get_slot("language") or "")


def customer(tracker: Tracker) -> Customer:
    meta = tracker.latest_message.get("metadata") or {}
    # external intents (payment events) carry no channel metadata: use the last user's
    for event in reversed(tracker.events):
        if event.get("event") == "user" and (event.get("metadata") or {}).get("channel"):
            meta = {**event["metadata"], **meta}
            break
    channel = str(meta.get("channel") or tracker.get_latest_input_channel() or "")
    where = {"channel": channel, "reply_to": meta.get("reply_to"), "from": meta.get("reply_from")}
    on_call = channel if meta.get("call") else ""
    messaging = meta.get("messaging")
    if on_call and isinstance(messaging, dict):  # a caller: links go to their WhatsApp
        where = {
            "channel": messaging.get("channel"),
            "reply_to": messaging.get("reply_to"),
            "from": messaging.get("reply_from"),
        }
    return Customer(
        conversation_id=tracker.sender_id,
        channel=str(where["channel"] or ""),
        phone=str(meta.get("phone") or ""),
        email=str(tracker.get_slot("email") or "") if "email" in tracker.slots else "",
        name=str(meta.get("profile_name") or ""),
        language=language(tracker),
        reply_to=str(where["reply_to"] or ""),
        reply_from=str(where["from"] or ""),
        on_call=on_call,
    )


def money(amount_minor: int, currency: str, lang: str) -> dict[str, str]:
    """A response's amount variables: ``amount`` written as ``lang`` writes numbers
    ("39.90 EUR", "39,90 EUR", "1200 JPY"); ``amount_comma`` always with a decimal comma
    (what the Spanish and Portuguese responses use)."""
    return {
        "amount": format_money(amount_minor, currency, lang),
        "amount_comma": format_money(amount_minor, currency, decimal_comma=True),
    }


def order_variables(order: Order, lang: str = "") -> dict[str, Any]:
    items = ", ".join(f"{i['qty']} × {i['name']}" for i in order.items)
    return {
        "order_id": order.order_id,
        "items": items,
        **money(order.amount_minor, order.currency, lang or order.language),
        "url": order.checkout_url or "",
    }


async def _product(service: Commerce, tracker: Tracker) -> tuple[Catalog | None, Any]:
    catalog = await service.catalog()
    wanted = tracker.get_slot("product")
    product = catalog.find_product(str(wanted)) if catalog is not None and wanted else None
    return catalog, product


def asked(question: str | None) -> EventType:
    """What the action just asked the user, for the rules that take "yes" and "no" as
    its answer (the ``asked`` slot: checkout, handoff, product; None: nothing asked)."""
    return SlotSet("asked", question)


# A subscription's confirmation says how often it is charged (catalog.yml ``recurring``).
CONFIRM_RESPONSES = {
    "month": "utter_confirm_subscription",
    "year": "utter_confirm_subscription_yearly",
}


class ActionOrderSummary(UsesCommerce, Action):
    """Before taking payment: what it costs, and whether to send the link.

    The product is the ``product`` slot: named in this message, or the one the
    conversation was about ("how much is the mug?" ... "I want to buy it")."""

    def name(self) -> str:
        return "action_order_summary"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        catalog, product = await _product(await self.service(), tracker)
        if catalog is None or product is None:
            dispatcher.utter_message(response="utter_which_product_to_buy")
            return [SlotSet("product", None), asked("product")]
        unit = catalog.minor(product.price)
        dispatcher.utter_message(
            response=CONFIRM_RESPONSES.get(product.recurring, "utter_confirm_order"),
            product_name=display_name(product, language(tracker)),
            **money(unit, catalog.currency, language(tracker)),
        )
        return [SlotSet("product", product.name), asked("checkout")]


class ActionCheckout(UsesCommerce, Action):
    """Create the order and its payment link, and send it."""

    def name(self) -> str:
        return "action_checkout"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        catalog, product = await _product(await self.service(), tracker)
        if catalog is None or product is None:
            dispatcher.utter_message(response="utter_which_product_to_buy")
            return [SlotSet("product", None), asked(None)]
        service = await self.service()
        buyer = customer(tracker)
        if not buyer.can_receive_messages:  # a caller with no WhatsApp to send the link to
            dispatcher.utter_message(response="utter_checkout_needs_messages")
            return [SlotSet("product", None), asked(None)]
        confirmation = str(tracker.latest_message.get("message_id") or len(tracker.events))
        order, status = await service.place_order(buyer, product, 1, confirmation)
        variables = order_variables(order, language(tracker))
        if status == "unavailable":
            dispatcher.utter_message(response="utter_payments_unavailable", **variables)
        elif status == "link_sent":
            dispatcher.utter_message(response="utter_checkout_link", **variables)
        elif status == "pending":
            dispatcher.utter_message(response="utter_checkout_delayed", **variables)
        else:
            dispatcher.utter_message(response="utter_checkout_failed", **variables)
        return [
            SlotSet("order_id", order.order_id),
            SlotSet("checkout_status", status),
            SlotSet("product", None),
            asked(None),
        ]


class ActionPaymentUpdate(UsesCommerce, Action):
    """Tell the user what happened to a payment (after a provider's webhook)."""

    def name(self) -> str:
        return "action_payment_update"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        intent = (tracker.latest_message.get("intent") or {}).get("name", "")
        order_id = next(tracker.get_latest_entity_values("order_id"), None) or tracker.get_slot(
            "order_id"
        )
        service = await self.service()
        order = await service.orders.get(str(order_id)) if order_id else None
        if order is None:
            logger.warning("payment update for unknown order %r", order_id)
            return []
        response = {
            "payment_succeeded": "utter_payment_succeeded",
            "payment_failed": "utter_payment_failed",
            "payment_refunded": "utter_payment_refunded",
            "payment_expired": "utter_payment_expired",
            "payment_link_ready": "utter_checkout_link",
            "payment_link_failed": "utter_checkout_failed",
        }.get(intent)
        if response is None:
            return []
        dispatcher.utter_message(response=response, **order_variables(order, language(tracker)))
        return [SlotSet("order_id", order.order_id), SlotSet("payment_status", order.status)]


class ActionRefund(UsesCommerce, Action):
    """Refund the conversation's last paid order, with the user's words as the reason."""

    def name(self) -> str:
        return "action_refund"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        service = await self.service()
        orders = await service.orders.for_conversation(tracker.sender_id)
        paid = [o for o in orders if o.status == "paid"]
        if not paid:
            dispatcher.utter_message(response="utter_no_order_to_refund")  # offers a person
            return [asked("handoff")]
        order = max(paid, key=lambda o: o.updated_at)
        reason = str(tracker.latest_message.get("text") or "requested by customer")[:500]
        status = await service.request_refund(order, reason)
        variables = order_variables(order, language(tracker))
        if status == "failed":
            dispatcher.utter_message(response="utter_refund_failed", **variables)
        else:
            dispatcher.utter_message(response="utter_refund_requested", **variables)
        return [SlotSet("order_id", order.order_id), asked(None)]


class CrmAction(UsesCommerce, Action, ABC):
    """A CRM write for the conversation's user; sets ``crm_status``."""

    action_name = ""

    def name(self) -> str:
        return self.action_name

    @abstractmethod
    async def write(self, service: Commerce, tracker: Tracker) -> Job | None:
        """Submit the write to the outbox (None when no CRM is configured)."""

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        return crm_status(await self.write(await self.service(), tracker))


class ActionCrmUpsertContact(CrmAction):
    """Create or update the user's contact in the CRM (by phone, then e-mail)."""

    action_name = "action_crm_upsert_contact"

    async def write(self, service: Commerce, tracker: Tracker) -> Job | None:
        return await service.save_contact(customer(tracker))


class ActionCrmCreateLead(CrmAction):
    """A lead for the user (e.g. when they ask for a person or a quote)."""

    action_name = "action_crm_create_lead"

    async def write(self, service: Commerce, tracker: Tracker) -> Job | None:
        return await service.create_lead(customer(tracker), "whatsapp bot")


class ActionCrmLogConversation(CrmAction):
    """Attach the conversation so far to the user's contact as a note."""

    action_name = "action_crm_log_conversation"

    async def write(self, service: Commerce, tracker: Tracker) -> Job | None:
        lines = []
        for event in tracker.events:
            kind = event.get("event")
            text = event.get("text")
            if kind not in ("user", "bot") or not text or str(text).startswith("/"):
                continue
            voice = (event.get("metadata") or {}).get("voice") if kind == "user" else None
            who = "User (voice)" if voice else ("User" if kind == "user" else "Bot")
            lines.append(f"{who}: {text}")
        ref = f"{tracker.sender_id}-{len(tracker.events)}"
        return await service.log_conversation(customer(tracker), "\n".join(lines), ref)
