"""The example bot remembers the product just discussed, and a "yes" answers the question
it just asked: in English, Spanish and Portuguese, end to end through the signed Twilio
webhook, asserting on what the fake Twilio API (and the fake Stripe API) received.

The same paths are Rasa test stories in tests/conversations/memory_{en,es,pt}.yml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STRIPE_KEY, WHSEC, ServerFactory, base_env
from tests.fakes.stripe_api import FakeStripeAPI
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.test_multilingual import Twilio


@dataclass(frozen=True)
class Lang:
    code: str
    user: str
    price_of_mug: str  # asks the mug's price
    mug_price: str  # how the answer writes it
    buy_it: str  # "I want to buy it", without naming it
    confirm: str  # the confirmation question's words
    yes: str
    link: str  # how the payment link message starts
    price_of_hoodie: str
    shipping: str  # an unrelated question in between
    take_it: str  # another way to say "I'll buy it"
    other_yes: str  # a typed "yes" that is not a button title
    declined: str  # the answer to "no" at the confirmation
    what_else: str  # the answer to "yes" at "anything else?"
    bye: str
    price_of_club: str
    per_month: str
    subscribe: str  # the subscription's confirmation question
    unknown_order: str  # the answer about an order that doesn't exist
    handoff: str
    anything_else: str  # the answer to "ok" after a plain answer


EN = Lang(
    "en", "+447700900101", "how much is the mug?", "12.50 EUR", "I want to buy it",
    "Shall I send you a payment link?", "yes", "Here is the payment link for order HB",
    "how much is the hoodie?", "how long does shipping take?", "I'll take it", "ok",
    "OK, I haven't placed an order.", "What else can I help you with?", "Bye!",
    "how much is the coffee club?", "9.00 EUR per month", "a month. Shall I send you a link",
    "Sorry, I couldn't find an order", "I'm passing you to a person", "Anything else",
)  # fmt: skip
ES = Lang(
    "es", "+34600200301", "¿cuánto cuesta la taza?", "12,50 EUR", "quiero comprarla",
    "¿Te envío el enlace de pago?", "sí", "Aquí tienes el enlace de pago del pedido HB",
    "¿qué precio tiene la sudadera?", "¿cuánto tarda el envío?", "me la llevo", "vale",
    "Vale, no he hecho ningún pedido.", "¿En qué más te puedo ayudar?", "¡Adiós!",
    "¿cuánto cuesta el club del café?", "9,00 EUR al mes", "al mes. ¿Te envío el enlace",
    "Lo siento, no encuentro ningún pedido", "Te paso con una persona", "¿Algo más",
)  # fmt: skip
PT = Lang(
    "pt", "+5511900003333", "quanto custa a caneca?", "12,50 EUR", "quero comprá-la",
    "Posso enviar o link de pagamento?", "sim", "Aqui está o link de pagamento do pedido HB",
    "qual o preço do moletom?", "quanto tempo demora a entrega?", "vou levar", "ok",
    "Certo, não fiz nenhum pedido.", "Em que mais posso ajudar?", "Tchau!",
    "quanto custa o clube do café?", "9,00 EUR por mês", "por mês. Posso enviar o link",
    "Desculpe, não encontrei nenhum pedido", "Vou passar você para uma pessoa", "Mais alguma",
)  # fmt: skip
LANGS = pytest.mark.parametrize("lang", [EN, ES, PT], ids=lambda lang: lang.code)


FALLBACKS = ("Sorry, I didn't get that", "Perdona, no te he entendido", "Desculpe, não entendi")


class Chat(Twilio):
    async def text(self, text: str) -> str:
        """What the user got; never the fallback (no rule or story knew what to do)."""
        answer = await super().text(text)
        assert not any(f in answer for f in FALLBACKS), (text, answer)
        return answer


@dataclass
class Shop:
    chat: Chat
    stripe: FakeStripeAPI


@pytest.fixture
async def shop(
    request: pytest.FixtureRequest,
    make_server: ServerFactory,
    twilio_api: FakeTwilioAPI,
    stripe_api: FakeStripeAPI,
    tmp_path: Path,
) -> Shop:
    """A WhatsApp (Twilio) shop that takes payments with (the fake) Stripe."""
    env = base_env(tmp_path / "memory", twilio_api.url) | {
        "HABLA_PAYMENTS": "stripe",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "HABLA_STRIPE_API_BASE": stripe_api.url,
    }
    client, runtime = await make_server(env=env, data_dir=tmp_path / "memory")
    lang: Lang = request.getfixturevalue("lang")
    return Shop(Chat(client, runtime, twilio_api, lang.user), stripe_api)


def only_session(stripe: FakeStripeAPI) -> dict[str, Any]:
    [session] = stripe.sessions.values()
    return session


@LANGS
async def test_buy_it_after_asking_its_price(shop: Shop, lang: Lang) -> None:
    """The issue: "quiero comprarla" after the mug's price asked which product again."""
    chat = shop.chat
    assert lang.mug_price in await chat.text(lang.price_of_mug)
    confirm = await chat.text(lang.buy_it)
    assert lang.mug_price in confirm and lang.confirm in confirm, confirm
    assert "\n1. " in confirm and "\n2. " in confirm  # Yes / No, numbered on WhatsApp
    link = await chat.text(lang.yes)
    assert link.startswith(lang.link), link
    session = only_session(shop.stripe)
    assert session["amount_total"] == 1250 and session["mode"] == "payment"
    assert session["url"] in link
    assert await chat.language() == lang.code


@LANGS
async def test_the_latest_product_is_remembered_across_other_questions(
    shop: Shop, lang: Lang
) -> None:
    chat = shop.chat
    await chat.text(lang.price_of_mug)
    assert "39" in await chat.text(lang.price_of_hoodie)
    assert "EU" in await chat.text(lang.shipping)  # something else in between
    confirm = await chat.text(lang.take_it)
    assert "39" in confirm and lang.confirm in confirm, confirm
    assert (await chat.text(lang.other_yes)).startswith(lang.link)
    assert only_session(shop.stripe)["amount_total"] == 3990


@LANGS
async def test_numbered_choices_answer_the_confirmation(shop: Shop, lang: Lang) -> None:
    """Nothing discussed yet: the bot asks which product; "3" picks the mug, "1" is yes."""
    chat = shop.chat
    await chat.text(lang.price_of_mug)
    assert lang.confirm in await chat.text(lang.buy_it)
    assert (await chat.text("1")).startswith(lang.link)  # 1. Yes
    assert only_session(shop.stripe)["amount_total"] == 1250


@LANGS
async def test_no_then_anything_else(shop: Shop, lang: Lang) -> None:
    chat = shop.chat
    await chat.text(lang.price_of_mug)
    await chat.text(lang.buy_it)
    declined = await chat.text("no")
    assert declined.startswith(lang.declined), declined
    assert shop.stripe.sessions == {}
    assert lang.what_else in await chat.text(lang.yes)  # "yes" to "anything else?"
    # still remembered: changing one's mind buys the mug
    assert lang.mug_price in await chat.text(lang.buy_it)
    await chat.text("2")  # 2. No
    assert lang.bye in await chat.text("no")
    assert shop.stripe.sessions == {}


@LANGS
async def test_a_subscription_price_is_monthly(shop: Shop, lang: Lang) -> None:
    chat = shop.chat
    assert lang.per_month in await chat.text(lang.price_of_club)
    confirm = await chat.text(lang.buy_it)
    assert lang.subscribe in confirm, confirm
    assert (await chat.text(lang.yes)).startswith(lang.link)
    session = only_session(shop.stripe)
    assert session["mode"] == "subscription" and session["amount_total"] == 900


@LANGS
async def test_yes_to_a_person_only_when_one_was_offered(shop: Shop, lang: Lang) -> None:
    chat = shop.chat
    await chat.text({"en": "where is my order?", "es": "¿dónde está mi pedido?",
                     "pt": "onde está o meu pedido?"}[lang.code])  # fmt: skip
    assert lang.unknown_order in await chat.text("ZZ11111")
    assert lang.handoff in await chat.text(lang.yes)
    found = await chat.text(
        {"en": "status of order AB12345", "es": "estado del pedido AB12345",
         "pt": "status do pedido AB12345"}[lang.code]
    )  # fmt: skip
    assert "AB12345" in found
    after = await chat.text("ok")  # nothing was offered: not a handoff
    assert lang.handoff not in after and lang.anything_else in after, after
    # no paid order to refund: a person is offered instead, and "yes" takes it
    offered = await chat.text(
        {"en": "I want a refund", "es": "quiero un reembolso", "pt": "quero um reembolso"}[
            lang.code
        ]
    )
    assert "\n1. " in offered  # a person / no thanks
    assert lang.handoff in await chat.text(lang.yes)
