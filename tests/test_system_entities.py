"""System entities (nlu/system_entities.py): the component's process() on Rasa
Messages, then the example bot end to end over WhatsApp (Twilio)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from rasa.shared.nlu.training_data.message import Message

from nlu.parse_cache import install_parse_cache
from nlu.system_entities import SystemEntityExtractor, parse_decimal
from tests.conftest import ServerFactory, base_env, post_twilio, whatsapp_form
from tests.fakes.twilio_api import FakeTwilioAPI

# Tuesday 1 December 2026, 09:00 UTC (10:00 in Madrid, 06:00 in São Paulo)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SystemEntityExtractor, "clock", staticmethod(lambda: NOW))


def parse(text: str, language: str = "en", phone: str = "", **config: Any) -> list[dict]:
    extractor = SystemEntityExtractor({**SystemEntityExtractor.get_default_config(), **config})
    metadata: dict[str, Any] = {"language": {"code": language}}
    if phone:
        metadata["phone"] = phone
    [message] = extractor.process([Message(data={"text": text, "metadata": metadata})])
    return [
        {k: e[k] for k in ("entity", "value", "text", "extractor")}
        for e in message.get("entities") or []
    ]


def values(entities: list[dict], name: str) -> list[Any]:
    return [e["value"] for e in entities if e["entity"] == name]


@pytest.mark.parametrize(
    ("language", "text", "phone"),
    [
        ("en", "call me at +34 612 345 678 tomorrow at 3pm", "whatsapp:+34600111222"),
        ("es", "llámame al +34 612 345 678 mañana a las 3 de la tarde", "whatsapp:+34600111222"),
        ("pt", "liga-me para +34 612 345 678 amanhã às 15h", "whatsapp:+34600111222"),
    ],
)
def test_the_phone_in_e164_and_tomorrow_at_three_in_the_senders_zone(
    now: None, language: str, text: str, phone: str
) -> None:
    found = parse(text, language, phone)
    assert values(found, "phone-number") == ["+34612345678"]
    # the sender is Spanish: Madrid's time, 1 December is winter (+01:00)
    assert values(found, "time") == ["2026-12-02T15:00:00+01:00"]
    assert {e["extractor"] for e in found} == {"SystemEntityExtractor"}
    assert not values(found, "number")  # the digits of the phone are not numbers too


def test_the_time_zone_comes_from_the_message_the_sender_or_the_setting(now: None) -> None:
    text = "call me tomorrow at 3pm"
    assert values(parse(text), "time") == ["2026-12-02T15:00:00+00:00"]  # default UTC
    assert values(parse(text, timezone="America/New_York"), "time") == ["2026-12-02T15:00:00-05:00"]
    br = parse("me liga amanhã às 9h30", "pt", "whatsapp:+5511987654321")
    assert values(br, "time") == ["2026-12-02T09:30:00-03:00"]
    extractor = SystemEntityExtractor(SystemEntityExtractor.get_default_config())
    [m] = extractor.process([Message(data={"text": text, "metadata": {"timezone": "Asia/Tokyo"}})])
    assert [e["value"] for e in m.get("entities")] == ["2026-12-02T15:00:00+09:00"]


def test_a_national_number_takes_the_senders_country() -> None:
    assert values(
        parse("ligue 11 98765-4321", "pt", "whatsapp:+5511900000000"), "phone-number"
    ) == ["+5511987654321"]
    assert values(parse("mi número es 612 345 678", "es", "+34600111222"), "phone-number") == [
        "+34612345678"
    ]
    assert values(parse("my number is 612 345 678"), "phone-number") == []  # no country known
    assert values(parse("612 345 678", default_region="ES"), "phone-number") == ["+34612345678"]


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("en", "twenty-one hoodies and 3 caps", [21, 3]),
        ("en", "one hundred and five", [105]),
        ("es", "quiero veintiuno y 2,5 kilos", [21, 2.5]),
        ("es", "doscientos cuarenta y tres", [243]),
        ("pt", "vinte e um, por favor", [21]),
        ("pt", "mil e quinhentos", [1500]),
        ("pt", "quero uma camiseta", []),  # an article is not a number
    ],
)
def test_numbers_in_digits_and_words(language: str, text: str, expected: list) -> None:
    assert values(parse(text, language), "number") == expected


@pytest.mark.parametrize(
    ("language", "text", "amount", "currency"),
    [
        ("en", "it was €20", "20", "EUR"),
        ("en", "I paid 20 euros", "20", "EUR"),
        ("pt", "custou R$ 15,90", "15.90", "BRL"),
        ("es", "son 1.234,50 €", "1234.50", "EUR"),
        ("en", "$1,234.50 please", "1234.50", "USD"),
        ("en", "about 30 pounds", "30", "GBP"),
        ("es", "100 dólares", "100", "USD"),
    ],
)
def test_amounts_of_money(language: str, text: str, amount: str, currency: str) -> None:
    found = parse(text, language)
    assert values(found, "amount-of-money") == [{"amount": amount, "currency": currency}]
    assert not values(found, "number")


def test_emails_urls_and_nothing_in_plain_chat() -> None:
    found = parse("write to Ana.Pérez@Example.COM or see https://shop.example/faq.", "es")
    assert values(found, "email") == ["Ana.Pérez@example.com"]
    assert values(found, "url") == ["https://shop.example/faq"]
    assert values(parse("visit www.loja.com.br"), "url") == ["https://www.loja.com.br"]
    for language, text in [
        ("es", "hola quiero saber dónde está mi pedido"),
        ("pt", "olá, quero comprar uma camiseta"),
        ("en", "I want to talk to a human"),
    ]:
        assert parse(text, language) == [], text


def test_button_payloads_are_left_alone() -> None:
    assert parse('/inform{"order_number": "AB12345"}') == []


def test_decimal_separators_follow_the_language() -> None:
    assert parse_decimal("1,500", "en") == 1500
    assert str(parse_decimal("1,50", "es")) == "1.50"
    assert parse_decimal("1.500", "pt") == 1500


def test_the_parse_cache_keeps_languages_and_countries_apart_and_never_keeps_a_time() -> None:
    calls: list[str] = []

    class Msg:
        def __init__(self, text: str, language: str, phone: str) -> None:
            self.text = text
            self.metadata = {"language": {"code": language}, "phone": phone}

    class Processor:
        def _parse_message_with_graph(self, message: Any, tracker: Any, only: bool = True) -> Any:
            calls.append(message.text)
            entities = [{"entity": "time"}] if "tomorrow" in message.text else []
            return {"text": message.text, "entities": entities}

    p = Processor()
    install_parse_cache(p, size=8)
    p._parse_message_with_graph(Msg("612 345 678", "es", "whatsapp:+34600000001"), None)
    p._parse_message_with_graph(Msg("612 345 678", "es", "whatsapp:+34600000002"), None)
    p._parse_message_with_graph(Msg("612 345 678", "es", "whatsapp:+5511900000000"), None)
    p._parse_message_with_graph(Msg("612 345 678", "pt", "whatsapp:+5511900000000"), None)
    assert len(calls) == 3  # same country and language: one parse
    p._parse_message_with_graph(Msg("tomorrow", "en", ""), None)
    p._parse_message_with_graph(Msg("tomorrow", "en", ""), None)
    assert calls[-2:] == ["tomorrow", "tomorrow"]


async def test_the_example_bot_gets_the_phone_and_the_time(
    now: None, make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    client, runtime = await make_server(
        env=base_env(tmp_path / "se", twilio_api.url), data_dir=tmp_path / "se"
    )
    store: Any = getattr(runtime.engine, "tracker_store", None)

    user = "+34600999111"
    text = "llámame al +34 612 345 678 mañana a las 3 de la tarde"
    assert (await post_twilio(client, whatsapp_form(text, user))).status == 200
    assert await runtime.dispatcher.wait_idle(60)
    assert twilio_api.to(f"whatsapp:{user}")  # the bot answered
    tracker = await store.retrieve(user)
    event = next(e for e in reversed(tracker.events) if e.type_name == "user")
    found = {e["entity"]: e["value"] for e in event.entities}
    assert found["phone-number"] == "+34612345678"
    assert found["time"] == "2026-12-02T15:00:00+01:00"
    assert event.parse_data["sentiment"]["method"] == "none"  # Spanish: no offline lexicon
