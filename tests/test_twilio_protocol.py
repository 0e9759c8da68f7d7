"""Twilio wire details: published signature vectors, form parsing, text rendering."""

from __future__ import annotations

import json

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from channels.base import OutputChannel
from channels.twilio import BadRequest, parse_message, split_text
from runtime.messages import BotReply, Button, mask_phone
from runtime.turn import match_choice
from tests.conftest import SHARED_DATA

VECTORS = json.loads(
    (SHARED_DATA / "protocol/twilio-python/request_validator_vectors.json").read_text()
)


def _params(raw: dict) -> MultiDict:
    md: MultiDict = MultiDict()
    for key, value in raw.items():
        for v in value if isinstance(value, list) else [value]:
            md.add(key, v)
    return md


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_signature_vectors(vector: dict) -> None:
    """The validator the channel uses accepts Twilio's published vectors..."""
    validator = RequestValidator(vector["auth_token"])
    params = _params(vector["params"])
    if vector["name"] == "json_body_bodySHA256":
        params = VECTORS["body_for_bodySHA256"]  # JSON body: the hash is in the URL
    assert validator.validate(vector["url"], params, vector["expected_signature"]) is vector["ok"]


@pytest.mark.parametrize("vector", VECTORS["vectors"][:5], ids=lambda v: v["name"])
def test_signature_vectors_reject_tampering(vector: dict) -> None:
    """...and rejects the same request with another token, param or URL."""
    good = vector["expected_signature"]
    params = _params(vector["params"])
    assert not RequestValidator("wrong-token").validate(vector["url"], params, good)
    tampered = params.copy()
    tampered["Digits"] = "9999"
    assert not RequestValidator(vector["auth_token"]).validate(vector["url"], tampered, good)
    other_url = vector["url"].replace("mycompany.com", "evil.example")
    assert not RequestValidator(vector["auth_token"]).validate(other_url, params, good)


def test_parse_whatsapp_text() -> None:
    msg = parse_message(
        {
            "MessageSid": "SM1",
            "From": "whatsapp:+34600111222",
            "To": "whatsapp:+14155238886",
            "Body": "hola",
            "ProfileName": "Ana",
            "WaId": "34600111222",
            "NumMedia": "0",
        }
    )
    assert msg.conversation_id == "+34600111222"
    assert msg.sender == "+34600111222"
    assert msg.reply_to == "whatsapp:+34600111222"
    assert msg.reply_from == "whatsapp:+14155238886"
    assert msg.text == "hola" and msg.profile_name == "Ana" and msg.message_id == "SM1"
    assert msg.metadata["twilio"]["kind"] == "whatsapp"


def test_parse_sms_media_location_and_button() -> None:
    msg = parse_message(
        {
            "SmsSid": "SM2",
            "From": "+14155550100",
            "To": "+14155550199",
            "Body": "",
            "NumMedia": "2",
            "MediaUrl0": "https://api.twilio.com/media/ME1",
            "MediaContentType0": "image/jpeg",
            "MediaUrl1": "https://api.twilio.com/media/ME2",
            "MediaContentType1": "audio/ogg",
            "Latitude": "40.4168",
            "Longitude": "-3.7038",
            "Address": "Puerta del Sol",
            "ButtonPayload": "/order_status",
            "ButtonText": "Order status",
        }
    )
    assert msg.metadata["twilio"]["kind"] == "sms"
    assert msg.conversation_id == "+14155550100" and msg.reply_to == "+14155550100"
    assert [m.content_type for m in msg.media] == ["image/jpeg", "audio/ogg"]
    assert msg.location is not None and msg.location.latitude == pytest.approx(40.4168)
    assert msg.location.address == "Puerta del Sol"
    assert msg.button_payload == "/order_status" and msg.text == "Order status"


@pytest.mark.parametrize(
    "form, reason",
    [
        ({"From": "whatsapp:+1", "To": "whatsapp:+2"}, "MessageSid"),
        ({"MessageSid": "SM1", "To": "whatsapp:+2"}, "From"),
        ({"MessageSid": "SM1", "From": "whatsapp:+1"}, "To"),
        ({"MessageSid": "SM1", "From": "+1", "To": "+2", "NumMedia": "x"}, "NumMedia"),
        (
            {"MessageSid": "SM1", "From": "+1", "To": "+2", "Latitude": "a", "Longitude": "b"},
            "Latitude",
        ),
    ],
)
def test_parse_rejects_malformed(form: dict, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_message(form)


def test_split_text_on_word_boundaries() -> None:
    words = " ".join(f"word{i}" for i in range(800))  # ~6,000 characters
    parts = split_text(words, 1600)
    assert len(parts) == 4
    assert all(len(p) <= 1600 for p in parts)
    assert " ".join(parts) == words  # nothing lost, no word cut
    assert split_text("x" * 3500, 1600) == ["x" * 1600, "x" * 1600, "x" * 300]
    assert split_text("short") == ["short"]
    assert split_text("") == []


def test_buttons_render_as_numbered_choices_and_map_back() -> None:
    reply = BotReply(
        text="Pick one",
        buttons=(Button("Opening hours", "/opening_hours"), Button("Shipping", "/shipping")),
    )
    assert OutputChannel.numbered_text(reply) == "Pick one\n\n1. Opening hours\n2. Shipping"
    offered = list(reply.buttons)
    assert match_choice("2", offered) == offered[1]
    assert match_choice(" 1. ", offered) == offered[0]
    assert match_choice("shipping", offered) == offered[1]
    assert match_choice("3", offered) is None
    assert match_choice("hello", offered) is None
    assert match_choice("2", []) is None


def test_mask_phone() -> None:
    assert mask_phone("whatsapp:+34600111222") == "whatsapp:+34******222"
    assert mask_phone("+14155550100") == "+14******100"
    assert "600111" not in mask_phone("+34600111222")
