"""Authoring commands: ``habla test`` (the example bot's conversation tests, through the
real turn), ``habla validate`` and ``habla translate`` (against the local
LibreTranslate fake), and reviewed translations winning over run-time translation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from habla.conversations import read_stories, report, run_story
from habla.server import Runtime
from habla.translate import translate_responses
from habla.validate import (
    button_findings,
    catalog_findings,
    language_findings,
    translation_findings,
    validate,
)
from i18n import reviewed as files
from i18n.stages import AuthoredResponses, LocalizeReplies
from nlu.engine import RasaEngine
from runtime.messages import BotReply, Button, InboundMessage
from runtime.settings import load_settings
from runtime.turn import TurnContext
from tests.conftest import PROJECT, base_env
from tests.fakes.translation import FakeLibreTranslate

CONVERSATIONS = PROJECT / "tests" / "conversations"


@pytest.fixture
async def runtime(engine: RasaEngine, tmp_path: Path) -> Any:
    env = base_env(tmp_path / "data") | {"HABLA_CHANNELS": ""}
    rt = Runtime(load_settings(env=env), engine=engine)
    await rt.start()
    yield rt
    await rt.close()


async def test_the_example_bots_conversations_pass(runtime: Runtime) -> None:
    stories = read_stories([CONVERSATIONS])
    assert {s.language for s in stories} >= {"en", "es", "pt"}
    results = [await run_story(runtime, story) for story in stories]
    assert all(r.passed for r in results), report(results)
    # what was checked came from the real turn: Spanish detected, the form ran
    turns = [t for r in results for t in r.turns]
    assert any(t["language"] == "es" and t["intent"] == "opening_hours" for t in turns)
    assert any("order_status_form" in t["actions"] for t in turns)


async def test_a_wrong_expectation_fails_at_its_first_divergence(
    runtime: Runtime, tmp_path: Path
) -> None:
    story = tmp_path / "wrong.yml"
    story.write_text(
        """
stories:
  - story: hours, expecting the shipping answer
    metadata: {language: es}
    steps:
      - user: hola
        intent: greet
      - action: utter_greet
      - user: ¿a qué hora abren?
        intent: opening_hours
      - action: utter_shipping
  - story: a language the conversation does not end up in
    metadata: {language: pt}
    steps:
      - user: where is my order?
        language: pt
""",
        encoding="utf-8",
    )
    results = [await run_story(runtime, s) for s in read_stories([story])]
    first, second = results
    assert not first.passed and first.divergence is not None
    assert first.divergence.turn == 2
    assert first.divergence.expected == "action: utter_shipping"
    assert first.divergence.actual.startswith("action: utter_opening_hours 'Abrimos")
    assert second.divergence is not None and second.divergence.expected == "language: pt"
    assert "0 passed, 2 failed" in report(results)


def test_entity_markup_in_test_stories(tmp_path: Path) -> None:
    path = tmp_path / "s.yml"
    path.write_text(
        "stories:\n- story: s\n  steps:\n  - user: how much is a [tee](product:t-shirt)\n"
        "  - intent: greet\n",
        encoding="utf-8",
    )
    [story] = read_stories([path])
    assert story.steps[0].value == "how much is a tee"
    assert story.steps[0].entities == (("product", "t-shirt"),)
    assert story.steps[1].value == "/greet"


# ---------------------------------------------------------------- validate


def bot_copy(tmp_path: Path) -> Path:
    bot = tmp_path / "bot"
    bot.mkdir()
    for name in ("domain.yml", "config.yml", "catalog.yml"):
        shutil.copy(PROJECT / name, bot / name)
    shutil.copytree(PROJECT / "data", bot / "data")
    return bot


def test_the_example_bot_is_valid(tmp_path: Path) -> None:
    env = base_env(tmp_path / "data")
    report = validate(PROJECT, env)
    assert report.ok, report.text()
    # Rasa's validator ran: its warnings about runtime-triggered intents are explained
    infos = [f.message for f in report.findings if f.severity == "info"]
    assert any("'voice_unclear'" in m for m in infos)


def test_validate_finds_broken_buttons_languages_catalog_and_settings(tmp_path: Path) -> None:
    bot = bot_copy(tmp_path)
    domain = yaml.safe_load((bot / "domain.yml").read_text(encoding="utf-8"))
    domain["responses"]["utter_new"] = [
        {
            "text": "Pick one",
            "buttons": [
                {"title": "Hours", "payload": "/opening_hour"},
                {"title": "Mug", "payload": '/buy{"colour": "red"}'},
            ],
        }
    ]
    (bot / "domain.yml").write_text(yaml.safe_dump(domain, allow_unicode=True), "utf-8")
    catalog = yaml.safe_load((bot / "catalog.yml").read_text(encoding="utf-8"))
    catalog["currency"] = "EURO"
    catalog["products"][1]["sku"] = "A1"
    catalog["products"][2]["price"] = 0
    catalog["products"][3] |= {"recurring": "fortnight", "stripe_price": "prod_1"}
    (bot / "catalog.yml").write_text(yaml.safe_dump(catalog, allow_unicode=True), "utf-8")
    env = base_env(tmp_path / "data") | {"HABLA_BOT_DIR": str(bot), "HABLA_PORT": "many"}
    report = validate(bot, env)
    errors = "\n".join(f"{f.check}: {f.message}" for f in report.errors)
    assert not report.ok
    assert "settings: " in errors and "HABLA_PORT" in errors
    assert "unknown intent 'opening_hour'" in errors
    assert "sets unknown entity 'colour'" in errors
    assert "utter_new has no 'es' variant" in errors
    assert "currency 'EURO' is not ISO 4217" in errors
    assert "sku A1 used by 't-shirt' and 'hoodie'" in errors
    assert "'mug': price 0.0 <= 0" in errors
    assert "recurring 'fortnight'" in errors
    assert "stripe_price 'prod_1'" in errors
    assert '"ok": false' in report.to_json()


def test_validate_checks_rasa_consistency(tmp_path: Path) -> None:
    bot = bot_copy(tmp_path)
    rules = (bot / "data" / "rules.yml").read_text(encoding="utf-8")
    rules = rules.replace("action: utter_shipping", "action: utter_shiping")
    (bot / "data" / "rules.yml").write_text(rules, encoding="utf-8")
    report = validate(bot, base_env(tmp_path / "data") | {"HABLA_BOT_DIR": str(bot)})
    assert any(f.check == "rasa" and "utter_shiping" in f.message for f in report.errors), (
        report.text()
    )


def test_language_and_button_checks_in_isolation() -> None:
    responses: dict[str, list[dict[str, Any]]] = {
        "utter_a": [
            {"text": "hi"},
            {"text": "hola", "condition": [{"name": "language", "value": "es"}]},
        ],
        "utter_b": [{"text": "bye"}],
    }
    assert language_findings(responses, ["en", "es"], False, {})[0].message.startswith(
        "utter_b has no 'es' variant"
    )
    assert [f.severity for f in language_findings(responses, ["en", "es"], True, {})] == ["info"]
    translated = {"es": {"responses": {"utter_b": [{"text": "adiós"}]}}}
    assert language_findings(responses, ["en", "es"], False, translated) == []
    domain = {
        "intents": ["greet"],
        "entities": [],
        "responses": {
            "u": [
                {
                    "text": "x",
                    "buttons": [
                        {"title": "t", "payload": "/greet"},
                        {"title": "free", "payload": "hello"},
                    ],
                }
            ]
        },
    }
    assert button_findings(domain) == []


def test_catalog_well_formed_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yml"
    path.write_text(
        "currency: USD\nproducts:\n"
        "  - {name: club, sku: S1, price: 9, recurring: month, stripe_price: price_1Abc,"
        " paypal_plan: P-5ML4271244454362WXNWU5NQ}\n"
        "  - {name: mug, sku: A1, price: 3, paypal_plan: plan-1, payments: square}\n",
        encoding="utf-8",
    )
    found = [(f.severity, f.message) for f in catalog_findings(path)]
    assert ("error", "product 'mug': paypal_plan 'plan-1' is not a plan id (P-...)") in found
    assert ("warning", "product 'mug': paypal_plan is only used for recurring products") in found
    assert any("payments 'square' is not a payment provider" in m for _, m in found)
    assert not any("club" in m for _, m in found)


# ---------------------------------------------------------------- translate


@pytest.fixture
async def libre() -> Any:
    fake = FakeLibreTranslate("libre-key")
    await fake.start()
    yield fake
    await fake.close()


async def test_translate_writes_machine_variants_for_review(
    tmp_path: Path, libre: FakeLibreTranslate
) -> None:
    bot = bot_copy(tmp_path)
    env = base_env(tmp_path / "data") | {
        "HABLA_BOT_DIR": str(bot),
        "HABLA_TRANSLATOR": "libretranslate",
        "HABLA_TRANSLATOR_URL": libre.url,
        "HABLA_TRANSLATOR_KEY": "libre-key",
    }
    settings = load_settings(env=env)
    outcome = await translate_responses(settings, "fr")
    path = bot / "translations" / "fr.yml"
    assert outcome.path == path and outcome.translated > 40 and outcome.kept == 0
    doc = files.read_translations(path)
    assert doc["language"] == "fr" and doc["source"] == "en"
    greet = doc["responses"]["utter_greet"][0]
    assert greet["text"].startswith("Bonjour!")  # the fake's dictionary: "hi" → "bonjour"
    assert [b["payload"] for b in greet["buttons"]] == [
        "/opening_hours",
        "/shipping",
        "/human_handoff",
    ]
    assert (
        greet["buttons"][2]["title"] == "Parler au une personne"
    )  # (the fake translates word by word)
    assert greet["machine"] is True and len(greet["source_hash"]) == 12
    price = doc["responses"]["utter_price"][0]["text"]
    assert "{article_product}" in price and "{price}" in price
    # the phone variant stays a phone variant, with its custom payload
    goodbyes = doc["responses"]["utter_goodbye"]
    assert goodbyes[1]["channel"] == "twilio_voice" and goodbyes[1]["custom"] == {"call": "hangup"}
    # what the provider received: en → fr, HTML with placeholders and payloads kept out
    bodies = [r.body for r in libre.requests]
    assert {(b["source"], b["target"], b["format"]) for b in bodies} == {("en", "fr", "html")}
    sent = [q for b in bodies for q in b["q"]]
    assert not any("/opening_hours" in q for q in sent)
    assert any('translate="no" class="notranslate">{price}</span>' in q for q in sent)

    # validate: every fr variant is unreviewed; review one, change another's source
    domain = (bot / "domain.yml").read_text(encoding="utf-8")
    responses = yaml.safe_load(domain)["responses"]
    unreviewed = translation_findings(responses, "en", {"fr": doc})
    assert len(unreviewed) == outcome.translated
    assert all("not reviewed yet" in f.message for f in unreviewed)
    del doc["responses"]["utter_greet"][0]["machine"]
    doc["responses"]["utter_shipping"][0]["text"] = "Nous livrons dans toute l'UE."
    doc["responses"]["utter_shipping"][0]["reviewed"] = True
    files.write_translations(path, doc)
    domain = domain.replace("Closed on Sundays", "Closed on Sundays and Mondays")
    (bot / "domain.yml").write_text(domain, encoding="utf-8")
    responses = yaml.safe_load(domain)["responses"]
    found = translation_findings(responses, "en", {"fr": files.read_translations(path)})
    assert len(found) == outcome.translated - 2
    stale = [f for f in found if "stale" in f.message]
    assert [f.where for f in stale] == ["translations/fr.yml utter_opening_hours[0]"]

    # translating again keeps the reviewed ones and retranslates the rest
    before = len(libre.requests)
    again = await translate_responses(settings, "fr")
    assert (again.translated, again.kept) == (outcome.translated - 2, 2)
    assert len(libre.requests) > before
    doc = files.read_translations(path)
    assert doc["responses"]["utter_shipping"][0]["text"] == "Nous livrons dans toute l'UE."
    assert "machine" not in doc["responses"]["utter_greet"][0]
    assert doc["responses"]["utter_opening_hours"][0]["machine"] is True


class RecordingTranslator:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        self.calls.append(list(texts))
        return [f"[{target}] {t}" for t in texts]


async def test_a_reviewed_translation_wins_over_runtime_translation() -> None:
    responses: dict[str, list[dict[str, Any]]] = {
        "utter_price": [{"text": "{article_product} costs {price}."}],
        "utter_greet": [
            {
                "text": "Hi! How can I help?",
                "buttons": [{"title": "Hours", "payload": "/opening_hours"}],
            }
        ],
        "utter_bye": [{"text": "Bye!"}],
    }
    doc = {
        "language": "fr",
        "source": "en",
        "responses": {
            "utter_price": [
                {
                    "text": "{article_product} coûte {price}.",
                    "source_hash": files.source_hash(responses["utter_price"][0]),
                }
            ],
            "utter_greet": [
                {
                    "text": "Bonjour ! Je peux vous aider ?",
                    "buttons": [{"title": "Horaires", "payload": "/opening_hours"}],
                    "source_hash": files.source_hash(responses["utter_greet"][0]),
                    "reviewed": True,
                    "machine": True,
                }
            ],
            "utter_bye": [  # not reviewed: machine translation at run time instead
                {"text": "Au revoir (machine)", "machine": True,
                 "source_hash": files.source_hash(responses["utter_bye"][0])}
            ],
        },
    }  # fmt: skip
    reviewed = files.ReviewedTranslations(responses, {"fr": doc}, "en")
    translator = RecordingTranslator()
    stage = LocalizeReplies(translator, AuthoredResponses(responses), "en", reviewed)
    replies = (
        BotReply(text="A hoodie costs 39.90 EUR."),
        BotReply(text="Hi! How can I help?", buttons=(Button("Hours", "/opening_hours"),)),
        BotReply(text="Bye!"),
    )
    msg = InboundMessage(channel="rest", conversation_id="c1", text="prix?")
    ctx = await stage(TurnContext(inbound=msg, output=None, language="fr", replies=replies))  # type: ignore[arg-type]
    assert [r.text for r in ctx.replies] == [
        "A hoodie coûte 39.90 EUR.",
        "Bonjour ! Je peux vous aider ?",
        "[fr] Bye!",
    ]
    assert ctx.replies[1].buttons == (Button("Horaires", "/opening_hours"),)
    assert translator.calls == [["Bye!"]]  # only the reply without a reviewed variant
