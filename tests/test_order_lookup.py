"""The order-status form finds the orders the bot itself took (``HB`` + 10 hex
characters), with their real status, as well as the sample orders of catalog.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actions.shop import normalize_order_number
from commerce.orders import STATUSES
from tests.conftest import ServerFactory
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_shop import Shop, shop_env, texts


@pytest.fixture
async def shop(
    make_server: ServerFactory, graph_api: FakeGraphAPI, stripe_api: FakeStripeAPI
) -> Shop:
    env = shop_env(graph_api.url, stripe_api.url)
    client, runtime = await make_server(env=env)
    return Shop(client, runtime, graph_api, stripe_api, FakeHubSpotAPI("unused"))


async def status_of(shop: Shop, number: str) -> str:
    """Ask for an order's status the way the form does: the question, then the number."""
    [ask] = texts(await shop.say("¿dónde está mi pedido?"))
    assert ask.startswith("¿Cuál es tu número de pedido?"), ask
    [answer] = texts(await shop.say(number))
    return answer


async def test_the_status_of_an_order_the_bot_took(shop: Shop) -> None:
    order_id, url = await shop.buy_hoodie()

    waiting = await status_of(shop, order_id.lower())  # case does not matter
    assert waiting.startswith(f"El pedido {order_id} (1 × sudadera, 39,90 EUR) está pendiente")
    assert url in waiting

    session_id = next(iter(shop.stripe.sessions))
    await shop.webhook_and_wait(shop.stripe.complete(session_id))
    paid = await status_of(shop, order_id)
    assert paid.startswith(f"El pedido {order_id} está pagado"), paid

    # the number given up front skips the question
    [again] = texts(await shop.say(f"¿dónde está el pedido {order_id}?"))
    assert again.startswith(f"El pedido {order_id} está pagado"), again

    # the sample orders of catalog.yml still answer, and an unknown number is not found
    shipped = await status_of(shop, "AB12345")
    assert shipped.startswith("El pedido AB12345 ya se ha enviado"), shipped
    unknown = await status_of(shop, "HB0000000000")
    assert unknown.startswith("Lo siento, no encuentro ningún pedido con el número HB0000000000")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("hb3f2a9c01d4", "HB3F2A9C01D4"),
        ("HB 3F2A9C01D4", "HB3F2A9C01D4"),
        ("mi pedido es el HB3F2A9C01D4, gracias", "HB3F2A9C01D4"),
        ("HB12345ABCDE", "HB12345ABCDE"),  # not the sample-style "HB12345"
        ("ab-12 345", "AB12345"),
        ("it's xy98765", "XY98765"),
        ("HB3F2A9C01", None),  # too short for either kind
        ("1234", None),
    ],
)
def test_order_numbers_of_both_kinds_are_recognised(text: str, number: str | None) -> None:
    assert normalize_order_number(text) == number


def test_every_order_status_has_a_response_in_each_language() -> None:
    domain = yaml.safe_load((Path(__file__).parents[1] / "domain.yml").read_text("utf-8"))
    for status in STATUSES:
        variations = domain["responses"][f"utter_order_{status}"]
        languages = [v["condition"][0]["value"] if "condition" in v else "" for v in variations]
        assert languages == ["es", "pt", ""], status
