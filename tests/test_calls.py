"""Phone calls in gather mode, over the wire: a fake of Twilio's side of the call posts
signed webhooks and follows the TwiML habla answers with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from habla.server import Runtime
from runtime.messages import BotReply, InboundMessage
from runtime.turn import Dialogue
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    STRIPE_KEY,
    WHSEC,
    ServerFactory,
    post_twilio,
    whatsapp_form,
)
from tests.fakes.stripe_api import FakeStripeAPI
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.fakes.twilio_call import FakeCall

CALLER = "+34600444555"
ADMIN = "admin-token"
TWILIO = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "HABLA_ADMIN_TOKEN": ADMIN,
}


async def admin(client: TestClient, path: str) -> Any:
    resp = await client.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def server(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI
) -> tuple[TestClient, Runtime]:
    return await make_server(env=TWILIO | {"HABLA_TWILIO_API_BASE": twilio_api.url})


def call(client: TestClient, caller: str = CALLER, sid: str = "1") -> FakeCall:
    return FakeCall(client, PUBLIC_URL, AUTH_TOKEN, caller, call_sid="CA" + sid.rjust(32, "0"))


async def test_an_english_call_by_voice_and_keypad(server: tuple[TestClient, Runtime]) -> None:
    client, runtime = server
    caller = call(client)
    greeting = await caller.start()
    assert "Hi! I'm the shop assistant" in greeting.text
    assert "For Opening hours, press 1. For Shipping, press 2." in greeting.text
    gather = greeting.gather
    assert gather is not None
    assert gather["input"] == "speech dtmf" and gather["language"] == "en-US"
    assert gather["speechTimeout"] == "auto" and gather["speechModel"] == "phone_call"
    assert "Opening hours" in gather["hints"] and "Shipping" in gather["hints"]
    assert greeting.said[0].voice == "Polly.Joanna-Neural"
    assert greeting.redirect.endswith("step=silence&n=1&s=0")

    hours = await caller.press("1")  # the keypad picks the first button
    assert "We're open Monday to Friday" in hours.text and hours.gather is not None

    again = await caller.say("hello")
    assert "For Shipping, press 2." in again.text
    shipping = await caller.say("Two.")  # so does saying its number
    assert "ship" in shipping.text.lower() and "Monday" not in shipping.text

    bye = await caller.say("goodbye")
    assert "Thanks for calling" in bye.text and bye.hangup and bye.gather is None
    assert await caller.hang_up(duration_s=93) == 204

    # recorded for the operator: the call, its minutes, what the caller said
    calls = await admin(client, "/api/calls")
    [record] = calls["calls"]
    assert record["call_sid"] == caller.call_sid and record["conversation_id"] == CALLER
    assert (record["status"], record["duration_s"], record["ended_by"]) == ("completed", 93, "bot")
    assert (record["mode"], record["language"], record["turns"]) == ("gather", "en", 5)
    assert calls["voice_minutes"] == 1.55
    conversation = await admin(client, f"/api/conversations/{CALLER}")
    assert conversation["calls"][0]["call_sid"] == caller.call_sid
    spoken = [m for m in conversation["messages"] if m.get("call", {}).get("speech_confidence")]
    assert spoken and spoken[0]["call"]["speech_confidence"] == "0.92"

    stored = await runtime.engine.tracker_store.retrieve(CALLER)  # type: ignore[union-attr]
    said = [e.text for e in stored.events if type(e).__name__ == "UserUttered"]
    assert said[:2] == ["/greet", "/opening_hours"]  # the digit became the button's payload


async def test_an_order_number_typed_on_the_keypad(server: tuple[TestClient, Runtime]) -> None:
    client, _ = server
    caller = call(client, "+34600444321", "9")
    await caller.start()
    ask = await caller.say("where is my order?")
    assert "type its digits and press the pound key" in ask.text
    status = await caller.press("12345")  # AB12345: the keypad has no letters
    assert "AB12345" in status.text and "shipped" in status.text.lower()


async def test_a_caller_continues_their_whatsapp_conversation_in_its_language(
    server: tuple[TestClient, Runtime], twilio_api: FakeTwilioAPI
) -> None:
    client, runtime = server
    resp = await post_twilio(client, whatsapp_form("hola, ¿a qué hora abrís?", user=CALLER))
    assert resp.status == 200
    assert await runtime.dispatcher.wait_idle(60)
    assert "Abrimos" in twilio_api.to(f"whatsapp:{CALLER}")[-1].body

    greeting = await call(client).start()  # the same number: the same conversation
    assert "¡Hola! Soy el asistente" in greeting.text
    assert "Para Horario, pulse 1." in greeting.text
    assert greeting.gather is not None and greeting.gather["language"] == "es-ES"
    assert greeting.said[0].voice == "Polly.Lucia-Neural"


async def test_a_language_switch_changes_the_next_gather(
    server: tuple[TestClient, Runtime],
) -> None:
    client, _ = server
    caller = call(client, "+34600444666", "2")
    assert (await caller.start()).gather["language"] == "en-US"  # type: ignore[index]
    answer = await caller.say("hola, ¿cuál es el horario de la tienda?")
    assert "Abrimos" in answer.text
    assert answer.gather is not None and answer.gather["language"] == "es-ES"
    assert answer.said[0].language == "es-ES"


async def test_a_portuguese_caller_asks_a_price(server: tuple[TestClient, Runtime]) -> None:
    client, _ = server
    caller = call(client, "+55119876543", "10")
    await caller.start()
    answer = await caller.say("olá, quanto custa a caneca?")
    assert "12,50 EUR" in answer.text and "caneca" in answer.text.lower()
    assert answer.gather is not None and answer.gather["language"] == "pt-BR"
    assert answer.said[0].voice == "Polly.Camila-Neural"


async def test_silence_reprompts_once_then_says_goodbye(
    server: tuple[TestClient, Runtime],
) -> None:
    client, _ = server
    caller = call(client, "+34600444777", "3")
    await caller.start()
    again = await caller.silence()
    assert "Are you still there?" in again.text and again.gather is not None
    end = await caller.silence()
    assert "Goodbye" in end.text and end.hangup
    await caller.hang_up(duration_s=12)
    [record] = (await admin(client, "/api/calls"))["calls"]
    assert (record["silences"], record["ended_by"], record["duration_s"]) == (2, "silence", 12)


async def test_a_withheld_number_gets_a_conversation_of_its_own(
    server: tuple[TestClient, Runtime],
) -> None:
    client, runtime = server
    caller = call(client, "anonymous", "4")
    await caller.start()
    await caller.say("when are you open?")
    assert "Monday" in caller.last.text
    tracker = await runtime.engine.tracker_store.retrieve(f"call:{caller.call_sid}")  # type: ignore[union-attr]
    assert tracker is not None and len(tracker.events) > 0


async def test_asking_for_a_person_transfers_the_call(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    client, _ = await make_server(env=TWILIO | {"HABLA_CALL_TRANSFER_NUMBER": "+34910000000"})
    caller = call(client, "+34600444888", "5")
    await caller.start()
    step = await caller.say("I want to talk to a person")
    assert "passing you to a person" in step.text
    assert step.dial == "+34910000000" and step.gather is None
    [record] = (await admin(client, "/api/calls"))["calls"]
    assert (record["ended_by"], record["transferred_to"]) == ("transfer", "+34910000000")

    client, _ = await make_server(env=TWILIO, data_dir=tmp_path / "other")
    caller = call(client, "+34600444889", "6")
    await caller.start()
    step = await caller.say("I want to talk to a person")  # no number: said, call goes on
    assert "passing you to a person" in step.text and not step.dial
    assert step.gather is not None


async def test_a_slow_turn_holds_the_caller_and_answers_afterwards(
    make_server: ServerFactory,
) -> None:
    client, runtime = await make_server(env=TWILIO | {"HABLA_CALL_HOLD_AFTER_S": "1"})
    release = asyncio.Event()
    dialogue = next(s for s in runtime.turn.answer_stages if isinstance(s, Dialogue))
    engine = dialogue.engine

    class Slow:
        async def handle(self, msg: InboundMessage) -> list[BotReply]:
            await release.wait()
            return await engine.handle(msg)

    dialogue.engine = Slow()
    caller = call(client, "+34600444999", "7")
    hold = await caller.start()
    assert "One moment, please." in hold.text and "step=wait" in hold.redirect
    release.set()
    greeting = await caller.silence()  # follows the redirect, as Twilio does
    assert "Hi! I'm the shop assistant" in greeting.text


async def test_a_caller_buys_and_gets_the_payment_link_on_whatsapp(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, stripe_api: FakeStripeAPI
) -> None:
    env = TWILIO | {
        "HABLA_TWILIO_API_BASE": twilio_api.url,
        "HABLA_CALL_WHATSAPP_FROM": "whatsapp:+14155238886",
        "HABLA_PAYMENTS": "stripe",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "HABLA_STRIPE_API_BASE": stripe_api.url,
    }
    client, runtime = await make_server(env=env)
    buyer = "+34600444100"
    caller = call(client, buyer, "11")
    await caller.start()
    confirm = await caller.say("hola, quiero comprar una taza")
    assert "12,50 EUR" in confirm.text and "pulse 1" in confirm.text, confirm.text
    said = await caller.say("sí")
    assert "Te he enviado por WhatsApp el enlace de pago" in said.text, said.text
    assert "http" not in said.text  # a link is never read out

    [sent] = await twilio_api.wait_for(1)
    assert (sent.to, sent.from_) == (f"whatsapp:{buyer}", "whatsapp:+14155238886")
    [session] = stripe_api.sessions.values()
    assert sent.body.startswith("Aquí tienes el enlace de pago del pedido HB")
    assert session["url"] in sent.body
    [order] = await runtime.commerce.orders.for_conversation(buyer)
    assert (order.channel, order.status) == ("twilio", "link_sent")
    assert order.metadata["reply_to"] == f"whatsapp:{buyer}"  # so is the payment's news


async def test_a_caller_with_no_whatsapp_to_write_to_is_told_so(
    make_server: ServerFactory, stripe_api: FakeStripeAPI
) -> None:
    env = TWILIO | {
        "HABLA_PAYMENTS": "stripe",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "HABLA_STRIPE_API_BASE": stripe_api.url,
    }
    client, runtime = await make_server(env=env)
    caller = call(client, "+34600444101", "12")
    await caller.start()
    await caller.say("I want to buy a mug")
    said = await caller.say("yes")
    assert "Write to us on WhatsApp" in said.text, said.text
    assert stripe_api.sessions == {}
    assert await runtime.commerce.orders.for_conversation("+34600444101") == []


@pytest.mark.parametrize("signature", ["", "bad"])
async def test_forged_or_unsigned_calls_are_refused(
    server: tuple[TestClient, Runtime], signature: str
) -> None:
    client, runtime = server
    caller = call(client, "+34600111999", "8")
    params: dict[str, Any] = caller._params(CallStatus="ringing")
    status = await caller.post("/webhooks/twilio_voice/webhook", params, signature=signature)
    assert status == 403 and caller.steps == []
    assert (await client.get("/api/calls")).status == 403  # the operator API needs its token
    assert (await admin(client, "/api/calls"))["calls"] == []
    assert await runtime.engine.tracker_store.retrieve("+34600111999") is None  # type: ignore[union-attr]


async def test_without_twilio_secrets_the_voice_webhook_is_closed(
    make_server: ServerFactory,
) -> None:
    client, runtime = await make_server()
    assert "twilio_voice" in runtime.closed_channels
    caller = call(client)
    status = await caller.post(
        "/webhooks/twilio_voice/webhook", caller._params(CallStatus="ringing")
    )
    assert status == 403
