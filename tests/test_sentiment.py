"""Sentiment per message (nlu/sentiment.py): the component's process() on Rasa
Messages, the slot's features, then the example bot: an angry customer is offered a
person, and the sentiment is stored with the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rasa.shared.nlu.training_data.message import Message

from nlu.sentiment import SentimentAnalyzer, SentimentSlot
from tests.conftest import ServerFactory, base_env, post_twilio, whatsapp_form
from tests.fakes.twilio_api import FakeTwilioAPI


def analyse(text: str, language: str, **config: Any) -> Message:
    component = SentimentAnalyzer({**SentimentAnalyzer.get_default_config(), **config})
    metadata = {"language": {"code": language, "reason": "detected"}}
    [message] = component.process([Message(data={"text": text, "metadata": metadata})])
    return message


@pytest.mark.parametrize(
    ("language", "text", "label", "method"),
    [
        ("en", "This is the worst service ever, I am furious!", "negative", "vader"),
        ("en", "Thank you so much, you were great!", "positive", "vader"),
        ("en", "What are your opening hours?", "neutral", "vader"),
        ("pt", "Este é o pior serviço que já vi, estou furioso!", "negative", "leia"),
        ("pt", "Muito obrigado, vocês são ótimos!", "positive", "leia"),
        ("pt", "Onde está meu pedido?", "neutral", "leia"),
        # no offline lexicon for Spanish: neutral, and it says so
        ("es", "¡Es el peor servicio del mundo, estoy furioso!", "neutral", "none"),
    ],
)
def test_each_message_gets_a_label_a_score_and_the_method(
    language: str, text: str, label: str, method: str
) -> None:
    message = analyse(text, language)
    sentiment = message.get("sentiment")
    assert sentiment["label"] == label and sentiment["method"] == method
    assert -1.0 <= sentiment["score"] <= 1.0
    if method == "none":
        assert sentiment["score"] == 0.0
    [entity] = message.get("entities")
    assert entity["entity"] == "sentiment" and entity["value"] == label
    assert entity["extractor"] == "SentimentAnalyzer"
    assert "sentiment" in message.as_dict(only_output_properties=True)  # → parse_data


def test_the_thresholds_decide_what_negative_means() -> None:
    assert analyse("no", "en").get("sentiment")["label"] == "negative"  # VADER: -0.296
    assert analyse("no", "en", negative_below=-0.5).get("sentiment")["label"] == "neutral"


def test_button_payloads_get_no_sentiment() -> None:
    message = analyse("/affirm", "en")
    assert message.get("sentiment") is None and not message.get("entities")


def test_only_negative_is_a_feature_for_the_policies() -> None:
    slot = SentimentSlot("sentiment", [], values=["negative", "neutral", "positive"])
    assert slot.as_feature() == [0.0]
    for value, feature in [("negative", [1.0]), ("neutral", [0.0]), ("positive", [0.0])]:
        slot.value = value
        assert slot.as_feature() == feature


async def test_an_angry_customer_is_offered_a_person_and_the_sentiment_is_stored(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    client, runtime = await make_server(
        env=base_env(tmp_path / "sent", twilio_api.url), data_dir=tmp_path / "sent"
    )

    store: Any = getattr(runtime.engine, "tracker_store", None)

    async def say(user: str, text: str) -> str:
        before = len(twilio_api.to(f"whatsapp:{user}"))
        assert (await post_twilio(client, whatsapp_form(text, user))).status == 200
        assert await runtime.dispatcher.wait_idle(60)
        return "\n".join(m.body for m in twilio_api.to(f"whatsapp:{user}")[before:])

    angry = "+447700900123"
    offer = await say(angry, "Where is my order?? This is ridiculous, the worst shop ever!")
    assert "pass you to a person" in offer and "1. Yes, a person" in offer
    tracker = await store.retrieve(angry)
    event = next(e for e in reversed(tracker.events) if e.type_name == "user")
    assert event.parse_data["sentiment"]["label"] == "negative"
    assert event.parse_data["sentiment"]["method"] == "vader"
    assert event.parse_data["sentiment"]["score"] < -0.5
    assert tracker.get_slot("sentiment") == "negative"
    assert "Someone from our team" in await say(angry, "yes")  # the existing handoff

    angry_pt = "+5511987650000"
    offer = await say(angry_pt, "Que absurdo, péssimo atendimento, estou furioso!")
    assert "passe você para uma pessoa" in offer

    calm = "+447700900456"
    assert "Opening hours" in await say(calm, "hello")  # greet as before
    tracker = await store.retrieve(calm)
    assert tracker.get_slot("sentiment") == "neutral"
