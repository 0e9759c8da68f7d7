"""Every turn in the user's language, end to end over WhatsApp and the REST channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from habla.server import Runtime
from tests.conftest import ServerFactory, base_env, post_twilio, whatsapp_env, whatsapp_form
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.translation import FakeLibreTranslate
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.test_whatsapp import WA

AUTH = {"Authorization": "Bearer rest-token"}


class Twilio:
    def __init__(self, client: TestClient, runtime: Runtime, api: FakeTwilioAPI, user: str) -> None:
        self.client, self.runtime, self.api, self.user = client, runtime, api, user

    async def text(self, text: str) -> str:
        before = len(self.api.to(f"whatsapp:{self.user}"))
        assert (await post_twilio(self.client, whatsapp_form(text, self.user))).status == 200
        assert await self.runtime.dispatcher.wait_idle(60)
        return "\n".join(m.body for m in self.api.to(f"whatsapp:{self.user}")[before:])

    async def language(self) -> str | None:
        return await language_of(self.runtime, self.user)


async def language_of(runtime: Runtime, conversation_id: str) -> str | None:
    assert runtime.stores is not None
    return (await runtime.stores.languages.get(conversation_id))[0]


@pytest.fixture
async def server(make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path) -> Any:
    client, runtime = await make_server(
        env=base_env(tmp_path / "ml", twilio_api.url), data_dir=tmp_path / "ml"
    )
    return client, runtime, twilio_api


async def test_a_spanish_user_gets_the_whole_bot_in_spanish(server: Any) -> None:
    chat = Twilio(server[0], server[1], server[2], "+34600100200")
    greet = await chat.text("hola, buenas tardes")
    assert "¡Hola!" in greet and "1. Horario" in greet
    assert await chat.language() == "es"
    assert "Enviamos a toda la UE" in await chat.text("2")  # "2" picks "Envíos"
    price = await chat.text("¿cuánto cuesta la sudadera?")
    assert "39,90 EUR" in price and "precio" in price
    assert "pedido" in (await chat.text("¿dónde está mi pedido?")).lower()
    assert "AB12345" in (await chat.text("AB12345"))
    await chat.text("ok")  # too short to mean anything about the language
    assert await chat.language() == "es"
    await chat.text("👍")
    assert await chat.language() == "es"


async def test_a_portuguese_user_over_rest(server: Any) -> None:
    client, runtime, _ = server

    async def say(text: str) -> str:
        resp = await client.post(
            "/webhooks/rest/webhook", headers=AUTH, json={"sender": "pt-user", "message": text}
        )
        return " ".join(m.get("text", "") for m in await resp.json())

    greet = await say("olá, boa tarde")
    assert "Olá" in greet
    assert "12,50 EUR" in await say("quanto custa a caneca?")
    assert "pedido" in (await say("cadê o meu pedido?")).lower()
    assert await language_of(runtime, "pt-user") == "pt"


async def test_a_user_who_switches_and_one_who_asks(server: Any) -> None:
    chat = Twilio(server[0], server[1], server[2], "+5511900001111")
    assert "Olá" in await chat.text("olá, tudo bem?")
    english = await chat.text("Actually I would prefer to write in English, what are your hours?")
    assert "Monday" in english and await chat.language() == "en"
    await chat.text("en español por favor")
    assert await chat.language() == "es"
    # asked for: it sticks even when the next message looks English
    hours = await chat.text("opening hours please")
    assert "lunes" in hours.lower() and await chat.language() == "es"


async def test_the_language_reaches_the_dialogue_as_a_slot_and_the_record(
    server: Any,
) -> None:
    client, runtime, api = server
    chat = Twilio(client, runtime, api, user="+34600300400")
    await chat.text("buenos días, ¿tienen gorras?")
    tracker = await runtime.engine.tracker_store.retrieve("+34600300400")
    assert tracker.get_slot("language") == "es"
    user_event = next(e for e in reversed(tracker.events) if e.type_name == "user")
    assert user_event.metadata["language"]["code"] == "es"
    assert user_event.metadata["language"]["reason"] == "detected"


@pytest.fixture
async def libre() -> Any:
    fake = FakeLibreTranslate("")
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def french(
    make_server: ServerFactory,
    twilio_api: FakeTwilioAPI,
    libre: FakeLibreTranslate,
    tmp_path: Path,
) -> tuple[TestClient, Runtime, FakeTwilioAPI]:
    """A server that also speaks French, through the (fake) LibreTranslate."""
    env = base_env(tmp_path / "fr", twilio_api.url) | {
        "HABLA_LANGUAGES": "en,es,pt,fr",
        "HABLA_TRANSLATOR": "libretranslate",
        "HABLA_TRANSLATOR_URL": libre.url,
    }
    client, runtime = await make_server(env=env, data_dir=tmp_path / "fr")
    return client, runtime, twilio_api


async def test_a_language_without_variants_is_translated_and_cached(
    french: tuple[TestClient, Runtime, FakeTwilioAPI], libre: FakeLibreTranslate
) -> None:
    chat = Twilio(*french, "+33600000001")
    answer = await chat.text("Bonjour, quels sont vos horaires d'ouverture ?")
    assert await chat.language() == "fr"
    # NLU ran on the English translation; the English reply was translated back
    sent = [r.body for r in libre.requests]
    assert any(r.body["source"] == "fr" and r.body["target"] == "en" for r in libre.requests)
    assert any(r.body["target"] == "fr" for r in libre.requests), sent
    assert "lundi" in answer.lower() and "9:00" in answer  # numbers protected
    calls = len(libre.requests)
    await chat.text("Bonjour, quels sont vos horaires d'ouverture ?")
    assert len(libre.requests) == calls  # both directions served from the cache


async def test_translator_down_means_the_authored_language_not_a_lost_turn(
    french: tuple[TestClient, Runtime, FakeTwilioAPI], libre: FakeLibreTranslate
) -> None:
    libre.fail_next(503, count=50)
    chat = Twilio(*french, "+33600000002")
    answer = await chat.text("Bonjour, quels sont vos horaires d'ouverture ?")
    assert answer.startswith("We're open Monday to Friday")  # authored English, not lost
    # both directions were tried and failed (503): NLU ran on the French text
    assert {r.body["target"] for r in libre.requests} == {"en", "fr"}
    assert await chat.language() == "fr"
    assert await chat.runtime.inbox.claim(all_pending=True) == []  # the turn completed


async def test_a_portuguese_user_over_the_cloud_api_and_a_spanish_one_over_rest(
    make_server: ServerFactory, graph_api: FakeGraphAPI, tmp_path: Path
) -> None:
    client, runtime = await make_server(
        env=whatsapp_env(graph_api.url), data_dir=tmp_path / "cloud"
    )
    wa = WA(client, runtime, graph_api, user="5511988887777")
    [greet] = await wa.say("oi, bom dia")
    assert greet["interactive"]["body"]["text"].startswith("Olá")
    titles = [b["reply"]["title"] for b in greet["interactive"]["action"]["buttons"]]
    ids = [b["reply"]["id"] for b in greet["interactive"]["action"]["buttons"]]
    assert ids == ["/opening_hours", "/shipping", "/human_handoff"]  # payloads untouched
    assert titles[0] != "Opening hours"  # titles in Portuguese
    [price] = await wa.say("quanto custa o boné?")
    assert "17,00 EUR" in price["text"]["body"]

    resp = await client.post(
        "/webhooks/rest/webhook",
        headers=AUTH,
        json={"sender": "es-rest", "message": "¿a qué hora abren?"},
    )
    body = await resp.json()
    assert "lunes" in body[0]["text"].lower()
