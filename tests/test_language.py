"""Language detection, the conversation prior and authored-variant bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

from i18n.detect import Detection, Detector
from i18n.language import LanguagePolicy
from i18n.stages import AuthoredResponses
from runtime.providers import LANGUAGE_DETECTORS

LANGS = ["en", "es", "pt"]


@pytest.fixture(scope="module")
def lingua() -> Detector:
    return LANGUAGE_DETECTORS.load("lingua", Detector)(LANGS)


@pytest.mark.parametrize("name", sorted(LANGUAGE_DETECTORS.names))
def test_detectors_pick_among_the_bots_languages(name: str) -> None:
    detector = LANGUAGE_DETECTORS.load(name, Detector)(LANGS)
    for text, code in [
        ("where is my order, I ordered it last week", "en"),
        ("¿dónde está mi pedido? lo compré la semana pasada", "es"),
        ("cadê o meu pedido? comprei na semana passada", "pt"),
    ]:
        found = detector.detect(text)
        assert found.language == code and 0.5 < found.confidence <= 1.0
    assert detector.detect("12345 👍").language is None


def test_langdetect_is_deterministic() -> None:
    a, b = (
        LANGUAGE_DETECTORS.load("langdetect", Detector)(LANGS),
        LANGUAGE_DETECTORS.load("langdetect", Detector)(LANGS),
    )
    texts = ["ok", "gracias", "obrigado", "si", "no", "hola amigo"]
    assert [a.detect(t) for t in texts] == [b.detect(t) for t in texts]


def test_short_and_ambiguous_messages_keep_the_conversation_language(lingua: Detector) -> None:
    policy = LanguagePolicy(lingua, LANGS)
    for text in [
        "ok",
        "👍",
        "1",
        "2.",
        "AB12345",
        "https://shop.example/x",
        "ana@example.com",
        "Ana",
        "no",
        "si",
        "ok gracias",
        "thanks!",
        "19,90 €",
    ]:
        for current in ("es", "pt"):
            decision = policy.decide(text, current)
            assert decision.language == current, (text, current, decision)
            assert not decision.changed


def test_a_switch_needs_clear_evidence(lingua: Detector) -> None:
    policy = LanguagePolicy(lingua, LANGS)
    switched = policy.decide("I would like to know where my order is, please", "es")
    assert switched.language == "en" and switched.changed and switched.reason == "detected"
    assert policy.decide("quanto custa a caneca grande?", "es").language == "pt"
    assert policy.decide("gorra", "pt").language == "pt"  # one unclear word is not enough
    assert policy.decide("gracias", "en").language == "en"  # thanks in passing
    assert policy.decide("gracias", None).language == "es"  # but a first message: Spanish


def test_first_message_takes_the_best_guess_and_falls_back_to_the_default(
    lingua: Detector,
) -> None:
    policy = LanguagePolicy(lingua, LANGS)
    assert policy.decide("buenas tardes, tienen camisetas?", None).language == "es"
    assert policy.decide("👍", None).language == "en"


@pytest.mark.parametrize(
    "text, code",
    [
        ("in English please", "en"),
        ("English please!", "en"),
        ("can you speak english?", "en"),
        ("en español", "es"),
        ("en espanol por favor", "es"),
        ("háblame en español", "es"),
        ("in spanish", "es"),
        ("em português", "pt"),
        ("fala português", "pt"),
        ("portugues por favor", "pt"),
        ("Português, por favor.", "pt"),
    ],
)
def test_a_user_can_ask_for_a_language(lingua: Detector, text: str, code: str) -> None:
    policy = LanguagePolicy(lingua, LANGS)
    decision = policy.decide(text, "en" if code != "en" else "es")
    assert decision.language == code and decision.explicit and decision.reason == "requested"


def test_an_asked_for_language_sticks(lingua: Detector) -> None:
    policy = LanguagePolicy(lingua, LANGS)
    assert (
        policy.decide("hola, quiero saber dónde está mi pedido", "en", sticky=True).language == "en"
    )
    assert policy.decide("en español", "en", sticky=True).language == "es"
    assert policy.requested("I speak English and Spanish") is None
    assert policy.requested("in french please") is None  # not one of the bot's languages


def test_authored_responses_tell_gaps_from_variants() -> None:
    responses: dict[str, list[dict[str, Any]]] = {
        "utter_greet": [
            {"condition": [{"type": "slot", "name": "language", "value": "es"}], "text": "¡Hola!"},
            {"text": "Hi!"},
        ],
        "utter_price": [
            {
                "condition": [{"type": "slot", "name": "language", "value": "es"}],
                "text": "{product} cuesta {price}.",
            },
            {"text": "{product} costs {price}."},
        ],
        "utter_bye": [{"text": "Bye!"}],
    }
    authored = AuthoredResponses(responses)
    assert authored.languages == {"es"}
    assert not authored.needs_translation("Hi!", "es")  # authored (Rasa picked it)
    assert authored.needs_translation("Hi!", "fr")
    assert authored.needs_translation("Bye!", "es")  # no Spanish variant: a gap
    assert not authored.needs_translation("A mug costs 12.50 EUR.", "es")
    assert authored.needs_translation("A mug costs 12.50 EUR.", "fr")
    assert authored.needs_translation("free text from an action", "fr")
    assert not authored.needs_translation("free text from an action", "es")


class _Fixed(Detector):
    name = "fixed"

    def __init__(self, result: Detection) -> None:
        super().__init__(LANGS)
        self.result = result

    def detect(self, text: str) -> Detection:
        return self.result


def test_confidence_bars() -> None:
    sure = LanguagePolicy(_Fixed(Detection("pt", 0.97)), LANGS)
    unsure = LanguagePolicy(_Fixed(Detection("pt", 0.7)), LANGS)
    assert sure.decide("camisola", "es").language == "pt"  # short: needs 0.95
    assert unsure.decide("camisola", "es").language == "es"
    assert unsure.decide("muito obrigado pela ajuda", "es").language == "pt"  # >= 3 words: 0.6
