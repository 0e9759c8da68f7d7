"""Money in the currency's own minor unit: a zero-decimal currency (JPY) is shown,
charged and written to the CRM in whole yen; euros keep their cents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from commerce.catalog import Catalog, format_money, from_minor, minor_units, to_minor
from commerce.crm.base import CRM, Contact, Deal
from commerce.crm.hubspot import HubSpotCRM
from commerce.orders import Order, SQLiteOrderStore
from commerce.service import Commerce
from runtime.settings import load_settings
from runtime.sqlite import SQLite
from tests.conftest import ServerFactory, base_env
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_shop import (
    HUBSPOT_TOKEN,
    Shop,
    deal_stage,
    eventually,
    shop_env,
    texts,
)

JPY_CATALOG = """\
currency: JPY
products:
  - name: mug
    names: {es: taza, pt: caneca}
    sku: A3
    price: 1200
  - name: hoodie
    names: {es: sudadera, pt: moletom}
    sku: A2
    price: 4990
orders: {}
"""


@pytest.fixture
async def hubspot_api() -> AsyncIterator[FakeHubSpotAPI]:
    fake = FakeHubSpotAPI(HUBSPOT_TOKEN, currencies=("EUR", "JPY"))
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def jpy_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "catalog-jpy.yml"
    path.write_text(JPY_CATALOG, encoding="utf-8")
    # action_product_price reads the catalog named by the environment
    monkeypatch.setenv("HABLA_CATALOG", str(path))
    return path


@pytest.fixture
async def jpy_shop(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    stripe_api: FakeStripeAPI,
    hubspot_api: FakeHubSpotAPI,
    jpy_catalog: Path,
) -> Shop:
    env = shop_env(
        graph_api.url,
        stripe_api.url,
        HABLA_CATALOG=str(jpy_catalog),
        HABLA_CRM="hubspot",
        HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN,
        HABLA_HUBSPOT_HOST=hubspot_api.url,
    )
    client, runtime = await make_server(env=env)
    return Shop(client, runtime, graph_api, stripe_api, hubspot_api)


async def test_yen_are_shown_charged_and_sent_to_the_crm_without_decimals(jpy_shop: Shop) -> None:
    shop = jpy_shop
    [price] = texts(await shop.say("¿cuánto cuesta la taza?"))
    assert price == "El precio de taza es 1200 JPY.", price

    [confirm] = texts(await shop.say("quiero comprar una taza"))
    assert confirm.startswith("taza: 1200 JPY."), confirm
    [link] = texts(await shop.tap("/affirm", "Sí"))
    assert "(1 × taza, 1200 JPY)" in link, link
    [session] = shop.stripe.sessions.values()
    assert session["amount_total"] == 1200 and session["currency"] == "jpy"

    [paid] = texts(await shop.webhook_and_wait(shop.stripe.complete(session["id"])))
    assert "(1 × taza, 1200 JPY)" in paid, paid
    await eventually(lambda: deal_stage(shop, "closedwon"))
    [deal] = shop.hubspot.objects("deals")
    assert float(deal["properties"]["amount"]) == 1200
    assert deal["properties"]["deal_currency_code"] == "JPY"


class RecordingCRM:
    """Keeps the deals it is given (the two calls ``Commerce._crm_order`` makes)."""

    name = "recording"

    def __init__(self) -> None:
        self.deals: list[Deal] = []

    async def upsert_contact(self, contact: Contact) -> str:
        return "contact-1"

    async def upsert_deal(self, deal: Deal) -> str:
        self.deals.append(deal)
        return f"deal-{len(self.deals)}"


def one_item_order(order_id: str, amount_minor: int, currency: str) -> Order:
    item: dict[str, Any] = {
        "sku": "A3",
        "name": "mug",
        "qty": 1,
        "unit_amount_minor": amount_minor,
        "currency": currency,
    }
    return Order(
        order_id=order_id,
        conversation_id="+34611222333",
        channel="whatsapp",
        address="+34611222333",
        language="en",
        items=[item],
        amount_minor=amount_minor,
        currency=currency,
    )


@pytest.mark.parametrize(
    ("currency", "amount_minor", "amount"),
    [("JPY", 1200, 1200), ("EUR", 1250, 12.5), ("KWD", 12340, 12.34)],
)
async def test_the_crm_deal_amount_is_in_the_currencys_major_unit(
    tmp_path: Path, currency: str, amount_minor: int, amount: float
) -> None:
    db = SQLite(tmp_path / "habla.sqlite3")
    store = SQLiteOrderStore(db)
    await store.setup()
    crm = RecordingCRM()
    settings = load_settings(env=base_env(tmp_path / "data"))
    service = Commerce(settings, db, crm=cast(CRM, crm), orders=store)
    await store.create(one_item_order("HB0123456789", amount_minor, currency))

    await service._crm_order({"order_id": "HB0123456789"})

    [deal] = crm.deals
    assert (deal.amount, deal.currency) == (amount, currency)
    await db.close()


@pytest.mark.parametrize(
    ("currency", "amount", "written"),
    [("KWD", 12.345, "12.345"), ("JPY", 1200.0, "1200"), ("EUR", 12.5, "12.50")],
)
async def test_hubspot_gets_every_digit_of_the_deal_amount(
    currency: str, amount: float, written: str
) -> None:
    fake = FakeHubSpotAPI(HUBSPOT_TOKEN, currencies=(currency,))
    await fake.start()
    crm = HubSpotCRM(access_token=HUBSPOT_TOKEN, host=fake.url, timeout_s=5.0)
    try:
        await crm.upsert_deal(
            Deal(ref="HB0123456789", name="mug", amount=amount, currency=currency, stage="open")
        )
        [deal] = fake.objects("deals")
        assert deal["properties"]["amount"] == written
    finally:
        await crm.close()
        await fake.close()


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("EUR", 2), ("usd", 2), ("JPY", 0), ("KRW", 0), ("VND", 0), ("CLP", 0), ("UGX", 0)]
    + [("XAF", 0), ("XOF", 0), ("KWD", 3), ("BHD", 3), ("OMR", 3), ("JOD", 3), ("TND", 3)]
    # Stripe keeps ISK two-decimal in its API (100 is 1 króna, whole krónur only)
    + [("ISK", 2)],
)
def test_minor_units_follow_stripe(currency: str, digits: int) -> None:
    assert minor_units(currency) == digits


@pytest.mark.parametrize(
    ("price", "currency", "minor"),
    [
        (19.90, "EUR", 1990),
        (12.5, "EUR", 1250),
        (0.285, "EUR", 29),  # half up, on the decimal written (not the binary float)
        (1200, "JPY", 1200),
        (1199.5, "JPY", 1200),
        (5.124, "KWD", 5120),  # Stripe wants the last digit of three-decimal amounts 0
        (5.125, "KWD", 5130),
        (1000, "ISK", 100000),
        (999.6, "ISK", 100000),  # whole krónur only
    ],
)
def test_to_minor(price: float, currency: str, minor: int) -> None:
    assert to_minor(price, currency) == minor
    assert Catalog(currency=currency, products=(), orders={}).minor(price) == minor


def test_from_minor_is_the_major_unit() -> None:
    assert from_minor(1990, "EUR") == Decimal("19.90")
    assert from_minor(1200, "JPY") == Decimal(1200)
    assert from_minor(5120, "KWD") == Decimal("5.120")
    assert from_minor(100000, "ISK") == Decimal(1000)


@pytest.mark.parametrize(
    ("minor", "currency", "language", "text"),
    [
        (1250, "EUR", "en", "12.50 EUR"),
        (1250, "EUR", "", "12.50 EUR"),
        (1250, "EUR", "es", "12,50 EUR"),
        (3990, "EUR", "pt-BR", "39,90 EUR"),
        (3990, "EUR", "fr", "39,90 EUR"),
        (1200, "JPY", "en", "1200 JPY"),
        (1200, "JPY", "es", "1200 JPY"),
        (5120, "KWD", "en", "5.120 KWD"),
        (100000, "ISK", "en", "1000 ISK"),
        (5, "usd", "en", "0.05 USD"),
    ],
)
def test_format_money(minor: int, currency: str, language: str, text: str) -> None:
    assert format_money(minor, currency, language) == text


def test_format_money_can_force_the_decimal_comma() -> None:
    assert format_money(1990, "EUR", "en", decimal_comma=True) == "19,90 EUR"
    assert format_money(1990, "EUR", "es", decimal_comma=False) == "19.90 EUR"
