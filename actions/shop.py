"""Custom actions for the habla example shop bot.

Authors can add their own actions here (or in another module of this
package): subclass ``rasa_sdk.Action``, return the action's name from
``name()``, implement ``async def run`` and list the name under ``actions:``
in domain.yml.

Product and order data come from ``catalog.yml`` in the bot folder, or from
the file named by the ``HABLA_CATALOG`` environment variable. Order status answers
for the orders the bot took itself (``HB`` + 10 characters, in the order store) and
for the sample orders in the catalog.

Actions never build user-facing sentences themselves: they name a response from
domain.yml and pass the variables it needs (``dispatcher.utter_message(response=...,
price=...)``). The response has one variation per language, chosen by the
``language`` slot, so every sentence is authored (and translated) in domain.yml.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.commerce import asked, language, money, order_variables
from actions.services import UsesCommerce
from commerce.catalog import display_name, load_catalog
from commerce.orders import STATUSES, Order
from commerce.service import Commerce

logger = logging.getLogger(__name__)

# The bot's own orders ("HB" + 10 hex digits, commerce.service.order_id_for) and the
# sample orders of catalog.yml (two letters + five digits).
ORDER_NUMBER_RE = re.compile(r"HB[0-9A-F]{10}|[A-Z]{2}\d{5}")
# Finds an order number inside a longer message, e.g. "it's ab-12345".
ORDER_NUMBER_SEARCH_RE = re.compile(
    r"(?<![A-Za-z0-9])HB[\s-]?[0-9A-F]{10}(?![0-9A-F])|(?<![A-Za-z])[A-Z]{2}[\s-]?\d{5}(?!\d)",
    re.IGNORECASE,
)


def normalize_order_number(value: str) -> str | None:
    """Normalise " ab-12 345 " to "AB12345" (and "hb3f2a9c01d4" to "HB3F2A9C01D4");
    None if it isn't an order number."""
    compact = re.sub(r"[\s-]+", "", value).upper()
    if ORDER_NUMBER_RE.fullmatch(compact):
        return compact
    # from_text mappings hand us the whole message ("my number is AB12345").
    match = ORDER_NUMBER_SEARCH_RE.search(value)
    if match:
        return re.sub(r"[\s-]+", "", match.group()).upper()
    return None


def _with_article(name: str) -> str:
    """Prefix "A" or "An" ("A hoodie", "An apron")."""
    article = "An" if name[:1].casefold() in "aeiou" else "A"
    return f"{article} {name}"


# A subscription's price says how often it is charged (catalog.yml ``recurring``).
PRICE_RESPONSES = {"month": "utter_price_monthly", "year": "utter_price_yearly"}


class ActionProductPrice(Action):
    """Tell the user the price of a product, or offer the product list."""

    def name(self) -> str:
        """Name used in domain.yml and stories."""
        return "action_product_price"

    async def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> list[EventType]:
        """Answer with the price, or with buttons for every product."""
        catalog = await load_catalog()
        if catalog is None:
            dispatcher.utter_message(response="utter_default")
            return []

        # Only a product named in this message (or its tapped button): "how much is a
        # scarf" with no product recognised must not answer with an earlier product.
        requested = next(tracker.get_latest_entity_values("product"), None)

        product = catalog.find_product(str(requested)) if requested else None
        if product is not None:
            amounts = money(catalog.minor(product.price), catalog.currency, language(tracker))
            dispatcher.utter_message(
                response=PRICE_RESPONSES.get(product.recurring, "utter_price"),
                article_product=_with_article(product.name),
                product_name=display_name(product, language(tracker)),
                price=amounts["amount"],
                price_comma=amounts["amount_comma"],
            )
            # Remembered: "I want to buy it" next buys this product (action_order_summary).
            return [SlotSet("product", product.name)]

        buttons = [
            {
                "title": p.name,
                "payload": "/ask_price" + json.dumps({"product": p.name}, separators=(",", ":")),
            }
            for p in catalog.products
        ]
        # Rasa's response interpolation gives up on values containing "0[" and would
        # show the raw "{requested_product}" placeholder; ask the plain question then.
        if requested and "0[" not in str(requested):
            dispatcher.utter_message(
                response="utter_product_not_sold",
                buttons=buttons,
                requested_product=str(requested),
            )
        else:
            dispatcher.utter_message(response="utter_which_product", buttons=buttons)
        return [SlotSet("product", None)]


class ValidateOrderStatusForm(FormValidationAction):
    """Validate the slots of order_status_form."""

    def name(self) -> str:
        """Rasa calls validate_<form name> while the form runs."""
        return "validate_order_status_form"

    async def validate_order_number(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        """Accept HB + 10 hex digits or two letters + five digits (spaces/hyphens
        ignored), upper-cased."""
        if isinstance(slot_value, list):
            slot_value = slot_value[-1] if slot_value else None
        normalized = normalize_order_number(str(slot_value)) if slot_value else None
        if normalized is None and slot_value:
            normalized = await _typed_on_a_keypad(str(slot_value))
        if normalized is None:
            dispatcher.utter_message(response="utter_invalid_order_number")
            return {"order_number": None}
        return {"order_number": normalized}


async def _typed_on_a_keypad(value: str) -> str | None:
    """A phone keypad has no letters: "12345" (ended with #) is the order whose number
    has exactly these digits, when only one does."""
    digits = value.strip().rstrip("#")
    if not (digits.isdigit() and 4 <= len(digits) <= 12):
        return None
    catalog = await load_catalog()
    numbers = catalog.orders if catalog is not None else {}
    matches = [n for n in numbers if re.sub(r"\D", "", n) == digits]
    return matches[0] if len(matches) == 1 else None


class ActionOrderStatus(UsesCommerce, Action):
    """Report the status of the order in the order_number slot."""

    def name(self) -> str:
        """Name used in domain.yml and rules."""
        return "action_order_status"

    async def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> list[EventType]:
        """Look the order up in the bot's order store, then in the catalog file's
        sample orders; then clear the slot."""
        raw_number = tracker.get_slot("order_number")
        number = normalize_order_number(str(raw_number)) if raw_number else None
        if number is None:
            dispatcher.utter_message(response="utter_ask_order_number")
            return [SlotSet("order_number", None), asked(None)]

        catalog = await load_catalog()
        sample = catalog.find_order(number) if catalog is not None else None
        try:
            placed = await _placed_order(await self.service(), number)
        except Exception:
            if sample is None:
                raise
            logger.exception("order store unavailable: %s answered from the catalog", number)
            placed = None
        question = None
        if placed is not None:
            response, variables = _placed_order_response(placed, tracker)
            dispatcher.utter_message(response=response, **variables)
        elif sample is None:
            # utter_order_not_found offers a person (buttons in domain.yml).
            dispatcher.utter_message(response="utter_order_not_found", order_id=number)
            question = "handoff"
        else:
            response, variables = _order_status_response(number, sample)
            dispatcher.utter_message(response=response, **variables)
        return [SlotSet("order_number", None), asked(question)]


async def _placed_order(service: Commerce, number: str) -> Order | None:
    """The order the bot itself took under this number, if any."""
    return await service.orders.get(number)


def _placed_order_response(order: Order, tracker: Tracker) -> tuple[str, dict[str, Any]]:
    """The domain response about an order the bot took (``utter_order_<status>``).

    Its items, amount and payment link are only told in the conversation that placed
    it; anyone else who has the number hears its status alone.
    """
    variables = order_variables(order, language(tracker))
    status = order.status
    if status == "link_sent" and order.conversation_id != tracker.sender_id:
        status = "created"  # waiting for payment, without someone else's payment link
    if status in STATUSES:  # each has its response (utter_order_cancelled is shared)
        return f"utter_order_{status}", variables
    return "utter_order_status_other", {**variables, "status": status}


def _order_status_response(number: str, order: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The domain response about an order's status and dates, with its variables."""
    status = str(order.get("status", "unknown")).lower()
    eta = order.get("eta")
    variables = {"order_id": number}
    if status in ("shipped", "processing"):
        if eta:
            variables["eta"] = str(eta)
            return f"utter_order_{status}_eta", variables
        return f"utter_order_{status}", variables
    if status == "delivered":
        delivered_on = order.get("delivered_on")
        if delivered_on:
            variables["delivered_on"] = str(delivered_on)
            return "utter_order_delivered_on", variables
        return "utter_order_delivered", variables
    if status == "cancelled":
        return "utter_order_cancelled", variables
    variables["status"] = status
    return "utter_order_status_other", variables
