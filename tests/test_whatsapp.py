"""WhatsApp Cloud API: real webhook payloads in, Graph API requests out (a local fake)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from channels.graph import render
from channels.whatsapp import parse_updates, valid_signature
from habla.server import Runtime
from runtime.messages import BotReply, Button, InboundMessage
from tests.conftest import (
    SHARED_DATA,
    WA_APP_SECRET,
    WA_PHONE_ID,
    WA_VERIFY_TOKEN,
    ServerFactory,
    base_env,
    post_twilio,
    whatsapp_env,
    whatsapp_form,
)
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.twilio_api import FakeTwilioAPI

PYWA = SHARED_DATA / "protocol/whatsapp-cloud_pywa"
UPDATES = PYWA / "tests/data/updates"
VECTOR = json.loads((PYWA / "x_hub_signature_256_vector.json").read_text())
PATH = "/webhooks/whatsapp/webhook"
_ids = itertools.count(1)


def all_updates() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{f.stem}:{name}", body)
        for f in sorted(UPDATES.glob("*.json"))
        for name, body in json.loads(f.read_text()).items()
    ]


def sign(body: bytes, secret: str = WA_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_ID},
        "contacts": contacts or [],
    }
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"value": value, "field": "messages"}]}],
    }


def text_msg(user: str, body: str) -> dict[str, Any]:
    return {
        "from": user,
        "id": f"wamid.IN{next(_ids):06d}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": body},
    }


def interactive(user: str, kind: str, reply_id: str, title: str) -> dict[str, Any]:
    return {
        "from": user,
        "id": f"wamid.IN{next(_ids):06d}",
        "timestamp": str(int(time.time())),
        "type": "interactive",
        "context": {"from": WA_PHONE_ID, "id": "wamid.OUT"},
        "interactive": {"type": kind, kind: {"id": reply_id, "title": title}},
    }


async def post(client: TestClient, payload: Any, signature: str | None = None) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    sig = sign(body) if signature is None else signature
    if sig:
        headers["X-Hub-Signature-256"] = sig
    return await client.post(PATH, data=body, headers=headers)


class WA:
    """One Cloud API user; returns the Graph messages the bot sent to them."""

    def __init__(
        self, client: TestClient, runtime: Runtime, api: FakeGraphAPI, user: str = "34600999888"
    ) -> None:
        self.client, self.runtime, self.api, self.user = client, runtime, api, user

    async def send(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        before = len(self.api.sent)
        contacts = [{"profile": {"name": "Lucía"}, "wa_id": self.user}]
        resp = await post(self.client, envelope(list(messages), contacts=contacts))
        assert resp.status == 200
        assert await self.runtime.dispatcher.wait_idle(60)
        return [m for m in self.api.sent[before:] if m["to"] == self.user]

    async def say(self, text: str) -> list[dict[str, Any]]:
        return await self.send(text_msg(self.user, text))


@pytest.fixture
async def wa(make_server: ServerFactory, graph_api: FakeGraphAPI) -> WA:
    client, runtime = await make_server(env=whatsapp_env(graph_api.url))
    return WA(client, runtime, graph_api)


def test_signature_vector() -> None:
    body = VECTOR["request_body"].encode()
    assert valid_signature(VECTOR["app_secret"], body, VECTOR["x_hub_signature_256"])
    assert not valid_signature(VECTOR["app_secret"], body + b" ", VECTOR["x_hub_signature_256"])
    assert not valid_signature("another-secret", body, VECTOR["x_hub_signature_256"])
    assert not valid_signature(VECTOR["app_secret"], body, "")
    assert not valid_signature("", body, VECTOR["x_hub_signature_256"])


EXPECTED = {  # update → what the turn sees (None: deliberately ignored)
    "message:text": ("text", "Body Text"),
    "message:image": ("media", "image"),
    "message:media_with_url": ("media", "image"),
    "message:video": ("media", "video"),
    "message:document": ("media", "document"),
    "message:audio": ("media", "audio"),
    "message:voice": ("media", "voice"),
    "message:static_sticker": ("media", "sticker"),
    "message:animated_sticker": ("media", "sticker"),
    "message:current_location": ("location", None),
    "message:chosen_location": ("location", "Facebook HQ"),
    "message:contacts": ("contacts", None),
    "message:order": ("order", None),
    "message:reply": ("text", "replied text"),
    "message:forwarded": ("text", "forwarded text"),
    "message:forwarded_many_times": ("text", "text forwarded many times"),
    "message:referral": ("text", None),
    "callback_button:button": ("payload", "callback_data"),
    "callback_button:quick_reply": ("payload", "callback_data"),
    "callback_button:quick_reply_without_context": ("payload", "callback_data"),
    "callback_selection:callback": ("payload", "callback_data"),
    "callback_selection:description": ("payload", "callback_data"),
    "flow_completion:completion": ("flow", None),
    "flow_completion:without_flow_token": ("flow", None),
}


@pytest.mark.parametrize("name, payload", all_updates(), ids=[n for n, _ in all_updates()])
def test_every_published_update_is_typed_or_deliberately_ignored(
    name: str, payload: dict[str, Any]
) -> None:
    messages, statuses, ignored = parse_updates(payload)
    expected = EXPECTED.get(name)
    if name.startswith("message_status:"):
        assert len(statuses) == 1 and not messages
        status = statuses[0]
        assert status.message_id and status.status == name.split(":")[1].replace(
            "with_tracker", "sent"
        ).replace("group", "read")
        if status.status == "failed":
            assert status.error_code == "130472" and "experiment" in status.error
        return
    if expected is None:
        assert not messages and ignored, name  # reactions, edits, deletes, system, calls...
        return
    assert len(messages) == 1 and not ignored, name
    msg = messages[0]
    assert msg.channel == "whatsapp" and msg.message_id and msg.sender
    kind, value = expected
    if kind == "text":
        assert msg.text == value or value is None
    elif kind == "media":
        assert msg.media[0].kind == value and msg.media[0].media_id
        assert msg.media[0].content_type
    elif kind == "location":
        assert msg.location is not None and (value is None or msg.location.label == value)
    elif kind == "payload":
        assert msg.button_payload == value and msg.text == "title"
    elif kind == "contacts":
        assert msg.metadata["whatsapp"]["contacts"][0]["name"]["formatted_name"]
    elif kind == "order":
        assert msg.metadata["whatsapp"]["order"]["product_items"]
    elif kind == "flow":
        assert "delivery_rating" in msg.metadata["whatsapp"]["flow_response"]


def test_profile_name_and_e164_conversation() -> None:
    messages, _, _ = parse_updates(json.loads((UPDATES / "message.json").read_text())["text"])
    msg = messages[0]
    assert msg.conversation_id == "+972987654321" and msg.reply_to == "972987654321"
    assert msg.profile_name == "Test Name"


def test_rendering_follows_meta_limits() -> None:
    three = BotReply("Pick", tuple(Button(f"Option {i}", f"/o{i}") for i in range(3)))
    [msg] = render(three)
    assert msg["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in msg["interactive"]["action"]["buttons"]] == [
        "/o0",
        "/o1",
        "/o2",
    ]
    long_title = BotReply("Pick", (Button("A very long button title indeed", "/x"),))
    title = render(long_title)[0]["interactive"]["action"]["buttons"][0]["reply"]["title"]
    assert len(title) <= 20
    six = BotReply("Pick", tuple(Button(f"Product {i}", f"/p{i}") for i in range(6)))
    [msg] = render(six)
    assert msg["interactive"]["type"] == "list"
    assert len(msg["interactive"]["action"]["sections"][0]["rows"]) == 6
    twelve = BotReply("Pick", tuple(Button(f"P{i}", f"/p{i}") for i in range(12)))
    [msg] = render(twelve)
    assert msg["type"] == "text" and "12. P11" in msg["text"]["body"]
    long = render(BotReply(" ".join(["palabra"] * 1200)))
    assert len(long) == 3 and all(len(m["text"]["body"]) <= 4096 for m in long)
    media = render(
        BotReply("Look", image="https://x.example/i.png", attachment="https://x.example/f.pdf")
    )
    assert [m["type"] for m in media] == ["text", "image", "document"]
    raw = {"type": "template", "template": {"name": "x", "language": {"code": "es"}}}
    assert render(BotReply(custom={"whatsapp": raw})) == [raw]


async def test_verification_handshake(wa: WA) -> None:
    ok = await wa.client.get(
        PATH,
        params={
            "hub.mode": "subscribe",
            "hub.challenge": "1158201444",
            "hub.verify_token": WA_VERIFY_TOKEN,
        },
    )
    assert ok.status == 200 and await ok.text() == "1158201444"
    bad = await wa.client.get(
        PATH, params={"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "nope"}
    )
    assert bad.status == 403


async def test_forged_unsigned_and_malformed_posts(wa: WA) -> None:
    payload = envelope([text_msg(wa.user, "hi")])
    assert (await post(wa.client, payload, signature="sha256=" + "0" * 64)).status == 403
    assert (await post(wa.client, payload, signature="")).status == 403
    assert (await post(wa.client, b"{not json", signature=sign(b"{not json"))).status == 400
    assert (await post(wa.client, b"[1, 2]")).status == 200  # valid JSON, nothing for us
    assert (await post(wa.client, {"object": "page", "entry": []})).status == 200
    await wa.runtime.dispatcher.wait_idle(10)
    assert wa.api.sent == []


async def test_every_published_update_is_accepted_over_http(wa: WA) -> None:
    for name, payload in all_updates():
        resp = await post(wa.client, payload)
        assert resp.status == 200, name
    assert await wa.runtime.dispatcher.wait_idle(120)


async def test_buttons_list_and_taps_map_back_to_payloads(wa: WA) -> None:
    [greet] = await wa.say("hello")
    assert greet["type"] == "interactive" and greet["interactive"]["type"] == "button"
    buttons = greet["interactive"]["action"]["buttons"]
    assert [b["reply"]["id"] for b in buttons] == ["/opening_hours", "/shipping", "/human_handoff"]
    assert wa.api.read  # marked as read
    [shipping] = await wa.send(interactive(wa.user, "button_reply", "/shipping", "Shipping"))
    assert "ship across the EU" in shipping["text"]["body"]

    [catalog] = await wa.say("how much is a unicorn?")
    assert catalog["interactive"]["type"] == "list"
    rows = catalog["interactive"]["action"]["sections"][0]["rows"]
    assert len(rows) == 7 and rows[1]["title"] == "hoodie"  # the catalog's products
    [price] = await wa.send(interactive(wa.user, "list_reply", rows[1]["id"], "hoodie"))
    assert "39.90" in price["text"]["body"]


async def test_location_and_voice_note_get_answers(wa: WA) -> None:
    location = {
        "from": wa.user,
        "id": f"wamid.IN{next(_ids):06d}",
        "type": "location",
        "location": {"latitude": 40.4, "longitude": -3.7, "name": "Sol"},
    }
    [reply] = await wa.send(location)
    assert reply["type"] == "text" and reply["text"]["body"]
    voice = {
        "from": wa.user,
        "id": f"wamid.IN{next(_ids):06d}",
        "type": "audio",
        "audio": {"mime_type": "audio/ogg; codecs=opus", "id": "123", "voice": True},
    }
    [reply] = await wa.send(voice)  # transcription comes with the voice issue
    assert "Sorry" in reply["text"]["body"]


async def test_several_messages_and_statuses_in_one_post_and_redelivery(wa: WA) -> None:
    [greet] = await wa.say("hi")
    other = "5511999887766"
    first, second = text_msg(wa.user, "when are you open?"), text_msg(other, "bye")
    statuses = [
        {"id": greet["_wamid"], "status": "delivered", "timestamp": "1", "recipient_id": wa.user},
        {
            "id": greet["_wamid"],
            "status": "failed",
            "timestamp": "2",
            "recipient_id": wa.user,
            "errors": [
                {
                    "code": 131026,
                    "title": "Message undeliverable",
                    "error_data": {"details": "Receiver is incapable"},
                }
            ],
        },
    ]
    payload = envelope([first, second], statuses)
    for _ in range(2):  # Meta redelivers when it is not sure we got it
        assert (await post(wa.client, payload)).status == 200
    assert await wa.runtime.dispatcher.wait_idle(60)
    to_user = [m for m in wa.api.sent if m["to"] == wa.user]
    assert len(to_user) == 2 and "Monday" in to_user[1]["text"]["body"]
    assert len([m for m in wa.api.sent if m["to"] == other]) == 1
    history = await wa.runtime.deliveries.statuses(greet["_wamid"])
    assert ("failed", "131026", "Message undeliverable — Receiver is incapable") in history
    record = (await wa.runtime.deliveries.history(f"+{wa.user}"))[0]
    assert record["status"] == "failed" and "undeliverable" in record["error"]


async def test_rate_limits_are_retried(wa: WA) -> None:
    wa.api.fail_next(429, 130429, "Rate limit hit")
    wa.api.fail_next(500, 131000, "Something went wrong")
    [reply] = await wa.say("when are you open?")
    assert "Monday" in reply["text"]["body"]


async def _age_window(runtime: Runtime, conversation: str, hours: float) -> None:
    await runtime.db.execute(
        "UPDATE inbox SET received_at = received_at - ? WHERE conversation_id = ?",
        (hours * 3600, conversation),
    )


async def test_outside_the_window_the_template_goes_instead(
    make_server: ServerFactory, graph_api: FakeGraphAPI, tmp_path: Path
) -> None:
    env = whatsapp_env(graph_api.url) | {
        "HABLA_WHATSAPP_TEMPLATE": "order_update",
        "HABLA_WHATSAPP_TEMPLATE_LANGUAGE": "es",
        "HABLA_WHATSAPP_TEMPLATE_PARAMS": "{profile_name}|tu pedido",
    }
    client, runtime = await make_server(env=env, data_dir=tmp_path / "window")
    wa = WA(client, runtime, graph_api)
    await wa.say("hi")
    await _age_window(runtime, f"+{wa.user}", 25)
    output = runtime.channels["whatsapp"].output
    assert output is not None
    inbound = InboundMessage(
        channel="whatsapp", conversation_id=f"+{wa.user}", reply_to=wa.user, profile_name="Lucía"
    )
    [delivery] = await output.send(inbound, BotReply("Your payment went through"))
    assert delivery.ok
    template = graph_api.sent[-1]
    assert template["type"] == "template"
    assert template["template"]["name"] == "order_update"
    assert template["template"]["language"] == {"code": "es"}
    params = template["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == ["Lucía", "tu pedido"]
    assert not any(
        m.get("text", {}).get("body") == "Your payment went through" for m in graph_api.sent
    )

    # inside the window, but Meta says re-engagement is required: template instead
    await wa.say("hola")
    graph_api.fail_next(400, 131047, "Re-engagement message")
    await runtime.dispatcher.wait_idle(10)
    output._template_sent.clear()  # type: ignore[attr-defined]
    deliveries = await output.send(inbound, BotReply("Anything else?"))
    assert [d.ok for d in deliveries] == [False, True]
    assert "131047" in deliveries[0].error and graph_api.sent[-1]["type"] == "template"


async def test_outside_the_window_without_a_template_nothing_is_sent(wa: WA) -> None:
    await wa.say("hi")
    await _age_window(wa.runtime, f"+{wa.user}", 30)
    before = len(wa.api.sent)
    output = wa.runtime.channels["whatsapp"].output
    assert output is not None
    inbound = InboundMessage(channel="whatsapp", conversation_id=f"+{wa.user}", reply_to=wa.user)
    [delivery] = await output.send(inbound, BotReply("late news"))
    assert not delivery.ok and "24-hour window" in delivery.error
    assert len(wa.api.sent) == before


async def test_one_person_keeps_one_conversation_across_whatsapp_channels(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    twilio_api: FakeTwilioAPI,
    tmp_path: Path,
) -> None:
    env = whatsapp_env(graph_api.url) | base_env(tmp_path / "both", twilio_api.url)
    client, runtime = await make_server(env=env, data_dir=tmp_path / "both")
    user = "34611222333"
    await post_twilio(client, whatsapp_form("where is my order?", f"+{user}"))
    assert await runtime.dispatcher.wait_idle(60)
    assert "order number" in twilio_api.sent[-1].body.lower()
    wa = WA(client, runtime, graph_api, user=user)
    [answer] = await wa.say("AB12345")  # the form continues on the Cloud API
    assert "shipped" in answer["text"]["body"].lower()


async def test_channels_can_be_kept_apart(
    make_server: ServerFactory,
    graph_api: FakeGraphAPI,
    twilio_api: FakeTwilioAPI,
    tmp_path: Path,
) -> None:
    env = (
        whatsapp_env(graph_api.url)
        | base_env(tmp_path / "apart", twilio_api.url)
        | {"HABLA_CONVERSATION_SCOPE": "channel"}
    )
    client, runtime = await make_server(env=env, data_dir=tmp_path / "apart")
    user = "34611222444"
    await post_twilio(client, whatsapp_form("where is my order?", f"+{user}"))
    assert await runtime.dispatcher.wait_idle(60)
    wa = WA(client, runtime, graph_api, user=user)
    [answer] = await wa.say("AB12345")  # a new conversation: no form is waiting here
    assert "shipped" not in answer["text"]["body"].lower()


async def test_media_upload_through_the_client(wa: WA) -> None:
    output = wa.runtime.channels["whatsapp"].output
    client = output.client  # type: ignore[union-attr]
    media_id = await client.upload_media(b"OggS fake", "audio/ogg", "reply.ogg")
    assert wa.api.uploads[0] == {"id": media_id, "type": "audio/ogg", "bytes": b"OggS fake"}


async def test_without_secrets_the_channel_fails_closed(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    client, runtime = await make_server(data_dir=tmp_path / "closed")
    assert "WHATSAPP_APP_SECRET" in runtime.closed_channels["whatsapp"]
    get = await client.get(
        PATH, params={"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": ""}
    )
    assert get.status == 403
    assert (await post(client, envelope([text_msg("1", "hi")]))).status == 403


async def test_operator_api_shows_messages_and_delivery_statuses(
    make_server: ServerFactory, graph_api: FakeGraphAPI, tmp_path: Path
) -> None:
    env = whatsapp_env(graph_api.url) | {"HABLA_ADMIN_TOKEN": "ops-token"}
    client, runtime = await make_server(env=env, data_dir=tmp_path / "ops")
    wa = WA(client, runtime, graph_api)
    [greet] = await wa.say("hello")
    failed = {
        "id": greet["_wamid"],
        "status": "failed",
        "timestamp": "2",
        "recipient_id": wa.user,
        "errors": [{"code": 131026, "title": "Message undeliverable"}],
    }
    assert (await post(client, envelope(statuses=[failed]))).status == 200
    url = f"/api/conversations/+{wa.user}"
    assert (await client.get(url)).status == 403
    assert (await client.get(url, headers={"Authorization": "Bearer nope"})).status == 403
    resp = await client.get(url, headers={"Authorization": "Bearer ops-token"})
    data = await resp.json()
    assert [(m["from"], m["text"]) for m in data["messages"]][:2] == [
        ("user", "hello"),
        ("bot", "Hi! I'm the shop assistant. How can I help?"),
    ]
    assert data["messages"][0]["channel"] == "whatsapp"
    [delivery] = data["deliveries"]
    assert delivery["provider_id"] == greet["_wamid"] and delivery["status"] == "failed"
    assert delivery["statuses"][0]["error_code"] == "131026"
