"""The example bot selling over WhatsApp with Zoho CRM behind it: a conversation and a
payment leave one contact and one won deal in Zoho (the local fake of
tests/fakes/zoho_api.py, through the accounts server's OAuth), written by the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import ServerFactory
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.fakes.zoho_api import FakeZohoAPI
from tests.test_crm import ZOHO_CLIENT, ZOHO_REFRESH
from tests.test_shop import USER, Shop, eventually, shop_env


@pytest.fixture
async def zoho_api() -> AsyncIterator[FakeZohoAPI]:
    fake = FakeZohoAPI(*ZOHO_CLIENT, ZOHO_REFRESH)
    await fake.start()
    yield fake
    await fake.close()


async def test_a_purchase_makes_a_contact_and_a_won_deal_in_zoho(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    stripe_api: FakeStripeAPI,
    zoho_api: FakeZohoAPI,
) -> None:
    env = shop_env(
        graph_api.url,
        stripe_api.url,
        HABLA_CRM="zoho",
        ZOHO_CLIENT_ID=ZOHO_CLIENT[0],
        ZOHO_CLIENT_SECRET=ZOHO_CLIENT[1],
        ZOHO_REFRESH_TOKEN=ZOHO_REFRESH,
        HABLA_ZOHO_API_BASE=zoho_api.url,
        HABLA_ZOHO_ACCOUNTS_URL=zoho_api.url,
    )
    client, runtime = await make_server(env=env)
    shop = Shop(client, runtime, graph_api, stripe_api, FakeHubSpotAPI("unused"))

    order_id, _ = await shop.buy_hoodie()
    await shop.webhook_and_wait(stripe_api.complete(next(iter(stripe_api.sessions))))

    async def won() -> bool:
        deals = zoho_api.objects("Deals")
        return len(deals) == 1 and deals[0]["Stage"] == "Closed Won"

    await eventually(won)
    [contact] = zoho_api.objects("Contacts")
    assert contact["Phone"] == "+" + USER
    assert (contact["First_Name"], contact["Last_Name"]) == ("Lucía", "Pérez")
    [deal] = zoho_api.objects("Deals")
    assert deal["Habla_Ref"] == order_id and deal["Amount"] == 39.9
    assert deal["Contact_Name"]["id"] == contact["id"]
    assert deal["Deal_Name"].startswith(order_id)
    upserts = zoho_api.sent("POST", "/crm/v6/Deals/upsert")
    assert {u["duplicate_check_fields"][0] for u in upserts} == {"Habla_Ref"}
    assert len(zoho_api.grants) == 1  # one access token for the whole conversation
