"""A Stripe event whose order update failed is applied when Stripe delivers it again:
the order ends up paid and the buyer hears about it exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from commerce.orders import Order
from runtime.retry import TransientError
from tests.conftest import ServerFactory
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_shop import USER, Shop, shop_env, texts


@pytest.fixture
async def shop(
    make_server: ServerFactory, graph_api: FakeGraphAPI, stripe_api: FakeStripeAPI
) -> Shop:
    env = shop_env(graph_api.url, stripe_api.url)
    client, runtime = await make_server(env=env)
    return Shop(client, runtime, graph_api, stripe_api, FakeHubSpotAPI("unused"))


async def test_a_webhook_that_failed_is_applied_on_stripes_retry(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id, _ = await shop.buy_hoodie()
    event = shop.stripe.complete(next(iter(shop.stripe.sessions)))
    orders = shop.runtime.commerce.orders
    real_update = orders.update_status
    failures = [TransientError("the order store timed out")]

    async def update_once_failing(*args: Any, **kwargs: Any) -> Order | None:
        if failures:
            raise failures.pop()
        return await real_update(*args, **kwargs)

    monkeypatch.setattr(orders, "update_status", update_once_failing)

    failed = await shop.webhook(event)
    # a store briefly down: 503 with Retry-After, and Stripe delivers the event again
    assert failed.status == 503 and failed.headers["Retry-After"] == "5"
    assert (await shop.admin(f"/api/orders/{order_id}"))["status"] == "link_sent"

    [paid] = texts(await shop.webhook_and_wait(event))  # the retry
    assert paid.startswith("¡Pago recibido! Pedido " + order_id), paid
    order = await shop.admin(f"/api/orders/{order_id}")
    assert [h["status"] for h in order["history"]] == ["created", "link_sent", "paid"]

    again = await shop.webhook(event)  # a duplicate after success changes and says nothing
    assert again.status == 200 and (await again.json())["handled"] is False
    assert await shop.runtime.dispatcher.wait_idle(60)
    assert [t for t in texts(shop.graph.sent) if t.startswith("¡Pago recibido!")] == [paid]
    assert all(m["to"] == USER for m in shop.graph.sent)
