"""Selling over WhatsApp, end to end, in Spanish: product → confirmation → Stripe
payment link → signed webhook → confirmation in the chat; the contact and the deal in
HubSpot. Providers are local fakes driven by the official SDKs; outages are scripted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from habla.server import Runtime
from tests.conftest import STRIPE_KEY, WHSEC, ServerFactory, whatsapp_env
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_whatsapp import envelope, interactive, post, text_msg

HUBSPOT_TOKEN = "pat-eu1-habla-test"
USER = "34611222333"
ADMIN = "admin-token"


@pytest.fixture
async def hubspot_api() -> AsyncIterator[FakeHubSpotAPI]:
    fake = FakeHubSpotAPI(HUBSPOT_TOKEN)
    await fake.start()
    yield fake
    await fake.close()


class Shop:
    """One Spanish-speaking WhatsApp (Cloud API) buyer and the providers."""

    def __init__(
        self,
        client: TestClient,
        runtime: Runtime,
        graph: FakeGraphAPI,
        stripe: FakeStripeAPI,
        hubspot: FakeHubSpotAPI,
    ) -> None:
        self.client, self.runtime = client, runtime
        self.graph, self.stripe, self.hubspot = graph, stripe, hubspot

    async def send(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        before = len(self.graph.sent)
        contacts = [{"profile": {"name": "Lucía Pérez"}, "wa_id": USER}]
        resp = await post(self.client, envelope([message], contacts=contacts))
        assert resp.status == 200
        assert await self.runtime.dispatcher.wait_idle(60)
        return [m for m in self.graph.sent[before:] if m["to"] == USER]

    async def say(self, text: str) -> list[dict[str, Any]]:
        return await self.send(text_msg(USER, text))

    async def tap(self, payload: str, title: str) -> list[dict[str, Any]]:
        return await self.send(interactive(USER, "button_reply", payload, title))

    async def webhook(self, event: dict[str, Any], **kw: Any) -> Any:
        body, headers = self.stripe.signed(event, **kw)
        return await self.client.post("/webhooks/stripe/webhook", data=body, headers=headers)

    async def webhook_and_wait(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        before = len(self.graph.sent)
        resp = await self.webhook(event)
        assert resp.status == 200, await resp.text()
        assert await self.runtime.dispatcher.wait_idle(60)
        return [m for m in self.graph.sent[before:] if m["to"] == USER]

    async def admin(self, path: str) -> Any:
        resp = await self.client.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def buy_hoodie(self) -> tuple[str, str]:
        """Ask, confirm; the order id and the payment link the user got."""
        [confirm] = await self.say("quiero comprar una sudadera")
        assert confirm["type"] == "interactive", confirm
        body = confirm["interactive"]["body"]["text"]
        assert "39,90 EUR" in body and "enlace de pago" in body
        ids = [b["reply"]["id"] for b in confirm["interactive"]["action"]["buttons"]]
        assert ids == ["/affirm", "/deny"]
        [link] = await self.tap("/affirm", "Sí")
        text = link["text"]["body"]
        assert text.startswith("Aquí tienes el enlace de pago del pedido HB"), text
        order_id = text.split("pedido ", 1)[1].split(" ", 1)[0]
        url = text.split(": ", 1)[1].split("\n", 1)[0]
        return order_id, url


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [
        m["text"]["body"] if m["type"] == "text" else m["interactive"]["body"]["text"]
        for m in messages
    ]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def shop_env(graph_url: str, stripe_url: str, **extra: str) -> dict[str, str]:
    """The shop on the Cloud API with Stripe (and whatever ``extra`` adds)."""
    return (
        whatsapp_env(graph_url)
        | {
            "HABLA_PAYMENTS": "stripe",
            "STRIPE_API_KEY": STRIPE_KEY,
            "STRIPE_WEBHOOK_SECRET": WHSEC,
            "HABLA_STRIPE_API_BASE": stripe_url,
            "HABLA_OUTBOX_BACKOFF_S": "0.05",
            "HABLA_ADMIN_TOKEN": ADMIN,
        }
        | extra
    )


@pytest.fixture
async def shop(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    stripe_api: FakeStripeAPI,
    hubspot_api: FakeHubSpotAPI,
) -> Shop:
    env = shop_env(
        graph_api.url,
        stripe_api.url,
        HABLA_CRM="hubspot",
        HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN,
        HABLA_HUBSPOT_HOST=hubspot_api.url,
    )
    client, runtime = await make_server(env=env)
    return Shop(client, runtime, graph_api, stripe_api, hubspot_api)


async def deal_stage(shop: Shop, stage: str) -> bool:
    deals = shop.hubspot.objects("deals")
    return len(deals) == 1 and deals[0]["properties"].get("dealstage") == stage


async def test_buy_pay_and_hear_about_it_in_spanish(shop: Shop) -> None:
    order_id, url = await shop.buy_hoodie()

    # Stripe got one Checkout Session with the order, the conversation and a key
    [session] = shop.stripe.sessions.values()
    assert session["url"] == url and session["metadata"]["order_id"] == order_id
    assert session["metadata"]["conversation_id"] == "+" + USER
    assert session["amount_total"] == 3990 and session["currency"] == "eur"
    [create] = [r for r in shop.stripe.requests if r.path == "/v1/checkout/sessions"]
    assert create.idempotency_key == f"checkout-{order_id}"

    # the buyer pays; Stripe delivers the signed event twice
    event = shop.stripe.complete(session["id"])
    replies = await shop.webhook_and_wait(event)
    again = await shop.webhook_and_wait(event)
    assert again == []  # the redelivery changes nothing and says nothing
    [paid] = texts(replies)
    assert paid.startswith("¡Pago recibido! Pedido " + order_id) and "39,90 EUR" in paid

    # the order with its history; the contact and the won deal in HubSpot
    order = await shop.admin(f"/api/orders/{order_id}")
    assert order["status"] == "paid"
    assert [h["status"] for h in order["history"]] == ["created", "link_sent", "paid"]
    await eventually(lambda: deal_stage(shop, "closedwon"))
    [contact] = shop.hubspot.objects("contacts")
    assert contact["properties"]["phone"] == "+" + USER
    assert contact["properties"]["firstname"] == "Lucía"
    [deal] = shop.hubspot.objects("deals")
    assert float(deal["properties"]["amount"]) == 39.9
    assert deal["properties"]["habla_ref"] == order_id
    assert contact["id"] in shop.hubspot.linked("deals", deal["id"], "contacts")


async def test_crm_down_then_up_makes_exactly_one_contact_and_one_deal(shop: Shop) -> None:
    shop.hubspot.fail_next(4, status=503)
    order_id, _ = await shop.buy_hoodie()  # the conversation is not held up
    event = shop.stripe.complete(next(iter(shop.stripe.sessions)))
    await shop.webhook_and_wait(event)
    await eventually(lambda: deal_stage(shop, "closedwon"))
    assert len(shop.hubspot.objects("contacts")) == 1
    assert len(shop.hubspot.objects("deals")) == 1
    jobs: list[Any] = []

    async def all_done() -> bool:
        jobs[:] = (await shop.admin("/api/outbox"))["jobs"]
        return {j["status"] for j in jobs} == {"done"}

    await eventually(all_done)
    assert any(j["attempts"] > 1 for j in jobs)  # the outage was retried, not lost
    # the operator sees which provider handled each write
    providers = {j["kind"]: j["result"].get("provider") for j in jobs}
    assert providers["payments.checkout"] == "stripe" and providers["crm.order"] == "hubspot"
    assert providers["crm.deal_stage"] == "hubspot"
    assert len(shop.hubspot.objects("contacts")) == 1
    assert len(shop.hubspot.objects("deals")) == 1


async def test_crm_refusing_for_good_is_visible_to_the_operator(shop: Shop) -> None:
    shop.hubspot.token = "rotated"  # every call now gets 401: a permanent error
    order_id, _ = await shop.buy_hoodie()
    failed: list[Any] = []

    async def gave_up() -> bool:
        failed[:] = (await shop.admin("/api/outbox?status=failed"))["jobs"]
        return bool(failed)

    await eventually(gave_up)
    assert failed[0]["key"] == f"crm.order:{order_id}" and "401" in failed[0]["last_error"]


async def test_payments_down_the_link_follows_when_stripe_is_back(shop: Shop) -> None:
    shop.stripe.fail_next(3, status=503)
    [confirm] = await shop.say("quiero comprar una taza")
    assert "12,50 EUR" in confirm["interactive"]["body"]["text"]
    [delayed] = texts(await shop.tap("/affirm", "Sí"))
    assert delayed.startswith("Nuestro sistema de pagos va lento")

    async def link_arrived() -> bool:
        return any(t.startswith("Aquí tienes el enlace") for t in texts(shop.graph.sent[-1:]))

    await eventually(link_arrived)
    assert len(shop.stripe.sessions) == 1  # one session despite the retries
    keys = {r.idempotency_key for r in shop.stripe.requests if r.path.endswith("sessions")}
    assert len(keys) == 1


async def test_declined_card_and_refund(shop: Shop) -> None:
    order_id, url = await shop.buy_hoodie()
    session_id = next(iter(shop.stripe.sessions))
    [failed] = texts(await shop.webhook_and_wait(shop.stripe.decline(session_id)))
    assert failed.startswith(f"El pago del pedido {order_id} no se ha completado")
    assert url in failed

    await shop.webhook_and_wait(shop.stripe.complete(session_id))
    [asked] = texts(await shop.say("quiero que me devuelvan el dinero"))
    assert asked.startswith("He pedido el reembolso de 39,90 EUR del pedido " + order_id)
    [refund] = shop.stripe.refunds.values()
    assert refund["amount"] == 3990 and refund["reason"] == "requested_by_customer"
    pi = refund["payment_intent"]
    [done] = texts(await shop.webhook_and_wait(shop.stripe.refunded(pi)))
    assert done.startswith("Te hemos devuelto 39,90 EUR del pedido " + order_id)
    order = await shop.admin(f"/api/orders/{order_id}")
    assert [h["status"] for h in order["history"]][-2:] == ["paid", "refunded"]


async def test_forged_or_stale_stripe_webhooks_are_refused(shop: Shop) -> None:
    await shop.buy_hoodie()
    event = shop.stripe.complete(next(iter(shop.stripe.sessions)))
    wrong = await shop.webhook(event, secret="whsec_someone_else")
    stale = await shop.webhook(event, timestamp=int(time.time()) - 3600)
    unsigned = await shop.client.post("/webhooks/stripe/webhook", data=b"{}")
    assert wrong.status == stale.status == unsigned.status == 400
    order_id = event["data"]["object"]["metadata"]["order_id"]
    assert (await shop.admin(f"/api/orders/{order_id}"))["status"] == "link_sent"


async def test_webhook_closed_without_a_signing_secret(
    make_server: ServerFactory, graph_api: FakeGraphAPI
) -> None:
    client, _ = await make_server(env=whatsapp_env(graph_api.url))
    resp = await client.post("/webhooks/stripe/webhook", data=b"{}")
    assert resp.status == 403


async def test_handoff_creates_a_lead_with_the_conversation_attached(shop: Shop) -> None:
    await shop.say("hola, buenas tardes")
    [handoff] = texts(await shop.say("quiero hablar con una persona"))
    assert handoff.startswith("Te paso con una persona")

    async def recorded() -> bool:
        return bool(shop.hubspot.objects("leads")) and bool(shop.hubspot.objects("notes"))

    await eventually(recorded)
    [contact] = shop.hubspot.objects("contacts")
    assert contact["properties"]["phone"] == "+" + USER
    [lead] = shop.hubspot.objects("leads")
    assert contact["id"] in shop.hubspot.linked("leads", lead["id"], "contacts")
    [note] = shop.hubspot.objects("notes")
    body = note["properties"]["hs_note_body"]
    assert "User: quiero hablar con una persona" in body and "Te paso con una persona" in body
    assert contact["id"] in shop.hubspot.linked("notes", note["id"], "contacts")


async def test_without_a_payment_provider_the_order_is_kept_for_the_team(
    make_server: ServerFactory, graph_api: FakeGraphAPI
) -> None:
    client, runtime = await make_server(env=whatsapp_env(graph_api.url))
    shop = Shop(client, runtime, graph_api, FakeStripeAPI(STRIPE_KEY), FakeHubSpotAPI("x"))
    [confirm] = await shop.say("quiero comprar una taza")
    assert confirm["interactive"]["body"]["text"].startswith("taza: 12,50 EUR")
    [saved] = texts(await shop.tap("/affirm", "Sí"))
    assert saved.startswith("Todavía no aceptamos pagos por aquí. He guardado tu pedido HB")
    assert "1 × taza" in saved
    assert await runtime.commerce.outbox.jobs() == []  # no CRM configured: nothing to write
