"""Log lines of a turn: one id from the webhook to its replies and their status
callbacks, JSON lines, nothing secret; and no ERROR from Rasa's response templates for
buttons whose payload carries JSON (``/buy{"product":"mug"}``)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from nlu.nlg import fill_payload
from runtime import logs
from runtime.messages import InboundMessage
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    ServerFactory,
    post_twilio,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI

USER = "+34600777888"
ADMIN = "admin-token-0123456789"
METRICS = "metrics-token-0123456789"


def twilio_env(api: FakeTwilioAPI) -> dict[str, str]:
    return {
        "HABLA_TWILIO_API_BASE": api.url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HABLA_ADMIN_TOKEN": ADMIN,
        "HABLA_METRICS_TOKEN": METRICS,
    }


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes with HABLA_LOG_FORMAT=json (at INFO)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_json_lines_tie_the_webhook_to_its_reply_and_its_status_without_secrets(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, json_lines: io.StringIO
) -> None:
    client, runtime = await make_server(env=twilio_env(twilio_api))
    form = whatsapp_form("hello", USER)
    assert (await post_twilio(client, form)).status == 200
    assert await runtime.dispatcher.wait_idle(60)
    [reply] = twilio_api.to(f"whatsapp:{USER}")
    # the reply could not be delivered: Twilio's status callback says so
    status = {"MessageSid": reply.sid, "MessageStatus": "undelivered", "ErrorCode": "63016"}
    status["To"] = f"whatsapp:{USER}"
    assert (await post_twilio(client, status, path="/webhooks/twilio/status")).status == 204

    text = json_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    inbound = InboundMessage(channel="twilio", conversation_id=USER, message_id=form["MessageSid"])
    turn = logs.turn_id(inbound)
    assert turn and form["MessageSid"] not in turn
    webhook = [line for line in lines if line["message"].startswith("message accepted")]
    sent = [line for line in lines if line["message"].startswith("reply sent")]
    undelivered = [line for line in lines if "undelivered" in line["message"]]
    assert [line.get("turn") for line in webhook] == [turn]
    assert [line.get("turn") for line in sent] == [turn]
    assert [line.get("turn") for line in undelivered] == [turn]
    assert "+34******888" in webhook[0]["message"]  # masked as mask_phone does
    for secret in (USER, USER[1:], AUTH_TOKEN, ADMIN, METRICS):  # no number, no secret
        assert secret not in text


def test_phone_numbers_a_library_logged_are_masked_in_both_formats() -> None:
    record = logging.LogRecord(
        "rasa.core.processor", logging.INFO, __file__, 1, "sender %s said hi at %s", None, None
    )
    record.args = ("whatsapp:+34600111222", 1733040000.25)
    token = logs.TURN.set("abc123")
    try:
        line = json.loads(logs.formatter("json").format(record))
        text = logs.formatter("text").format(record)
    finally:
        logs.TURN.reset(token)
    assert line["message"] == "sender whatsapp:+34******222 said hi at 1733040000.25"
    assert line["turn"] == "abc123" and line["logger"] == "rasa.core.processor"
    assert "34600111222" not in text and "[abc123]" in text and "1733040000.25" in text


async def test_which_product_buttons_keep_their_json_payloads_and_log_no_error(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, caplog: pytest.LogCaptureFixture
) -> None:
    client, runtime = await make_server(env=twilio_env(twilio_api))
    caplog.set_level(logging.INFO)
    resp = await post_twilio(client, whatsapp_form("I want to buy something", USER))
    assert resp.status == 200
    assert await runtime.dispatcher.wait_idle(60)
    [question] = twilio_api.to(f"whatsapp:{USER}")
    assert question.body.startswith("Which product would you like to buy?")
    assert "2. Hoodie" in question.body
    # before: Rasa's interpolator logged one ERROR (with a traceback) per button
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]
    assert runtime.stores is not None
    offered = await runtime.stores.choices.recall(USER)
    assert [b.payload for b in offered][:3] == [
        '/buy{"product":"t-shirt"}',
        '/buy{"product":"hoodie"}',
        '/buy{"product":"mug"}',
    ]
    # the payload arrives intact: "2" is the hoodie, priced from the catalog
    resp = await post_twilio(client, whatsapp_form("2", USER))
    assert await runtime.dispatcher.wait_idle(60)
    answer = twilio_api.to(f"whatsapp:{USER}")[-1].body
    assert "39.90" in answer, answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_payload_json_is_kept_and_its_values_are_still_filled() -> None:
    slots = {"product": "mug", "language": "en"}
    assert fill_payload('/buy{"product":"t-shirt"}', slots) == '/buy{"product":"t-shirt"}'
    assert fill_payload('/buy{"product":"{product}"}', slots) == '/buy{"product":"mug"}'
    assert fill_payload("/choose_{language}", slots) == "/choose_en"
    assert fill_payload("/greet", slots) == "/greet"
