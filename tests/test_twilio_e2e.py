"""End to end over the wire: a signed Twilio webhook in, the reply at the fake Twilio API.

Every example-bot path, including the form and the custom actions, plus bad input,
duplicates, action errors and send failures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from habla.server import Runtime
from runtime.messages import BotReply, InboundMessage
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BOT_NUMBER,
    PUBLIC_URL,
    ServerFactory,
    post_twilio,
    sign,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI, SentMessage

USER = "+34600111222"


class Chat:
    """One WhatsApp user talking to the server; returns what arrived at the fake."""

    def __init__(
        self, client: TestClient, runtime: Runtime, api: FakeTwilioAPI, user: str = USER
    ) -> None:
        self.client, self.runtime, self.api, self.user = client, runtime, api, user

    async def say(self, text: str, **extra: str) -> list[SentMessage]:
        before = len(self.api.to(f"whatsapp:{self.user}"))
        resp = await post_twilio(self.client, whatsapp_form(text, self.user, **extra))
        assert resp.status == 200
        assert "<Response></Response>" in await resp.text()
        assert await self.runtime.dispatcher.wait_idle(60)
        return self.api.to(f"whatsapp:{self.user}")[before:]

    async def text(self, text: str, **extra: str) -> str:
        return "\n".join(m.body for m in await self.say(text, **extra))


@pytest.fixture
async def chat(make_server: ServerFactory, twilio_api: FakeTwilioAPI) -> Chat:
    client, runtime = await make_server(
        env={
            "HABLA_TWILIO_API_BASE": twilio_api.url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        }
    )
    return Chat(client, runtime, twilio_api)


async def test_greet_offers_numbered_choices_and_a_number_picks_one(chat: Chat) -> None:
    sent = await chat.say("hello")
    assert len(sent) == 1
    reply = sent[0]
    assert reply.from_ == BOT_NUMBER and reply.to == f"whatsapp:{USER}"
    assert "1. Opening hours" in reply.body and "2. Shipping" in reply.body
    assert reply.status_callback == f"{PUBLIC_URL}/webhooks/twilio/status"
    assert "ship across the EU" in await chat.text("2")
    assert await chat.api.wait_for(2)
    # a button's title maps back to its payload as well
    await chat.text("hi")
    assert "Monday to Friday" in await chat.text("opening hours")


async def test_faq_paths(chat: Chat) -> None:
    assert "Monday to Friday" in await chat.text("when are you open?")
    shipping = await chat.text("how much is shipping and how long does delivery take")
    assert "ship across the EU" in shipping
    assert "person" in await chat.text("I want to talk to a human")
    assert "Bye" in await chat.text("bye")


async def test_price_from_the_catalog_action(chat: Chat) -> None:
    unknown = await chat.text("how much does a unicorn cost?")
    assert "t-shirt" in unknown and "tote bag" in unknown  # the catalog offered as choices
    assert "19.90" in await chat.text("1")  # picking the first product
    assert "39.90" in await chat.text("how much is the hoodie?")


async def test_order_status_form_validates_and_answers(chat: Chat) -> None:
    assert "order number" in (await chat.text("where is my order?")).lower()
    assert "two letters and five digits" in await chat.text("1234")
    answer = await chat.text("ab-12345")
    assert "AB12345" in answer and "shipped" in answer.lower()
    # the number given up front skips the question
    assert "being prepared" in await chat.text("what's the status of order XY98765")


async def test_out_of_scope_gets_the_fallback(chat: Chat) -> None:
    text = await chat.text("what's the weather on mars tomorrow?")
    assert "Sorry" in text


async def test_an_action_that_raises_gets_the_fallback_and_the_conversation_goes_on(
    chat: Chat, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object) -> list[object]:
        raise RuntimeError("catalog database is down")

    endpoint = chat.runtime.engine.action_endpoint  # type: ignore[union-attr]
    monkeypatch.setitem(endpoint.executor.actions, "action_product_price", broken)
    text = await chat.text("how much is the mug?")
    assert "Sorry, I didn't get that" in text
    assert "catalog database is down" in caplog.text  # the error is logged with its cause
    monkeypatch.undo()
    assert "12.50" in await chat.text("how much is the mug?")


async def test_forged_or_missing_signature_is_rejected_and_nothing_processed(chat: Chat) -> None:
    form = whatsapp_form("hello")
    forged = sign(PUBLIC_URL + "/webhooks/twilio/webhook", form, token="not-the-token")
    assert (await post_twilio(chat.client, form, signature=forged)).status == 403
    assert (await post_twilio(chat.client, form, signature="")).status == 403
    # signed for another URL (e.g. the internal one behind the proxy)
    internal = sign(str(chat.client.make_url("/webhooks/twilio/webhook")), form)
    assert (await post_twilio(chat.client, form, signature=internal)).status == 403
    tampered = dict(form, Body="transfer everything")
    good = sign(PUBLIC_URL + "/webhooks/twilio/webhook", form)
    assert (await post_twilio(chat.client, tampered, signature=good)).status == 403
    await chat.runtime.dispatcher.wait_idle(5)
    assert chat.api.sent == [] and chat.api.attempts == 0
    # the same message properly signed is accepted afterwards: nothing was recorded
    assert (await post_twilio(chat.client, form)).status == 200


async def test_malformed_form_is_a_400_with_a_reason(chat: Chat) -> None:
    form = whatsapp_form("hello")
    del form["From"]
    resp = await post_twilio(chat.client, form)
    assert resp.status == 400
    assert "From" in await resp.text()
    form = whatsapp_form("hello", NumMedia="lots")
    assert (await post_twilio(chat.client, form)).status == 400


async def test_a_redelivered_message_is_processed_once(chat: Chat) -> None:
    form = whatsapp_form("hello")
    responses = [await post_twilio(chat.client, form) for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200]
    await chat.runtime.dispatcher.wait_idle(60)
    assert len(chat.api.sent) == 1


async def test_transient_send_failures_are_retried_and_delivered_once(chat: Chat) -> None:
    chat.api.fail_next(503, 20500, "Service Unavailable")
    chat.api.fail_next(429, 20429, "Too Many Requests")
    sent = await chat.say("when are you open?")
    assert len(sent) == 1 and "Monday" in sent[0].body
    assert chat.api.attempts == 3
    history = await chat.runtime.deliveries.history(USER)
    assert [(h["status"], h["attempts"]) for h in history] == [("sent", 3)]


async def test_a_send_that_times_out_is_retried(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    client, runtime = await make_server(
        env={
            "HABLA_TWILIO_API_BASE": twilio_api.url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "HABLA_SEND_TIMEOUT_S": "0.3",
        },
        data_dir=tmp_path / "timeouts",
    )
    twilio_api.delays = [2.0]  # the first request stalls past the timeout
    chat = Chat(client, runtime, twilio_api)
    sent = await chat.say("when are you open?")
    assert len(sent) == 1 and "Monday" in sent[0].body
    assert twilio_api.attempts == 2
    history = await runtime.deliveries.history(USER)
    assert [(h["status"], h["attempts"]) for h in history] == [("sent", 2)]


async def test_a_send_whose_answer_is_lost_is_not_sent_twice(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    """Twilio takes the message but its answer never arrives (the send times out):
    before trying again, habla finds the message in Twilio's list and sends nothing
    more (Twilio takes no idempotency key; before, the user got the reply twice)."""
    client, runtime = await make_server(
        env={
            "HABLA_TWILIO_API_BASE": twilio_api.url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "HABLA_SEND_TIMEOUT_S": "0.3",
        },
        data_dir=tmp_path / "lost-answers",
    )
    twilio_api.answer_delays = [2.0]  # recorded at once, answered after the timeout
    chat = Chat(client, runtime, twilio_api)
    sent = await chat.say("when are you open?")
    assert len(sent) == 1 and "Monday" in sent[0].body
    assert (twilio_api.attempts, twilio_api.listed) == (1, 1)
    history = await runtime.deliveries.history(USER)
    assert [(h["status"], h["provider_id"]) for h in history] == [("sent", sent[0].sid)]
    # a later reply whose first try goes through is not looked up at all
    assert "Monday" in (await chat.say("when are you open?"))[0].body
    assert (twilio_api.attempts, twilio_api.listed) == (2, 1)


async def test_media_without_text_gets_the_fallback(chat: Chat) -> None:
    sent = await chat.say(
        "",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        MediaContentType0="audio/ogg",
    )
    assert len(sent) == 1 and "Sorry" in sent[0].body


async def test_a_permanent_send_failure_is_recorded_with_its_reason(chat: Chat) -> None:
    chat.api.fail_next(400, 63016, "Outside the allowed window")
    assert await chat.say("when are you open?") == []
    assert chat.api.attempts == 1  # not retried
    history = await chat.runtime.deliveries.history(USER)
    assert history[0]["status"] == "failed"
    assert "63016" in history[0]["error"] and "allowed window" in history[0]["error"]


async def test_status_callbacks_are_verified_and_recorded(chat: Chat) -> None:
    sent = await chat.say("hello")
    sid = sent[0].sid
    path = "/webhooks/twilio/status"
    form = {
        "MessageSid": sid,
        "MessageStatus": "undelivered",
        "ErrorCode": "63024",
        "To": f"whatsapp:{USER}",
        "AccountSid": ACCOUNT_SID,
    }
    assert (await post_twilio(chat.client, form, path=path, signature="bogus")).status == 403
    assert (await post_twilio(chat.client, form, path=path)).status == 204
    delivered = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID}
    assert (await post_twilio(chat.client, delivered, path=path)).status == 204
    assert await chat.runtime.deliveries.statuses(sid) == [
        ("undelivered", "63024", ""),
        ("delivered", "", ""),
    ]
    history = await chat.runtime.deliveries.history(USER)
    assert history[0]["status"] == "delivered"


async def test_long_replies_are_split_and_images_sent_as_media(chat: Chat) -> None:
    output = chat.runtime.channels["twilio"].output
    assert output is not None
    long_text = " ".join(["habla"] * 700)  # 4,199 characters
    inbound = InboundMessage(
        channel="twilio", conversation_id=USER, reply_to=f"whatsapp:{USER}", reply_from=BOT_NUMBER
    )
    deliveries = await output.send(
        inbound, BotReply(text=long_text, image="https://x.example/a.png")
    )
    assert [d.ok for d in deliveries] == [True, True, True]
    bodies = [m.body for m in chat.api.sent]
    assert all(len(b) <= 1600 for b in bodies) and " ".join(bodies) == long_text
    assert [m.media_urls for m in chat.api.sent] == [[], [], ["https://x.example/a.png"]]


async def test_without_twilio_credentials_the_channel_fails_closed(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, runtime = await make_server(data_dir=tmp_path / "closed")
    assert "twilio" in runtime.closed_channels
    form = whatsapp_form("hello")
    assert (await post_twilio(client, form)).status == 403
    assert (await post_twilio(client, form, path="/webhooks/twilio/status")).status == 403
    assert "answer 403" in caplog.text
