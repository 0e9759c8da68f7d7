"""Remote NLU providers as Rasa NLU components: the base every provider shares.

A provider component sits in ``config.yml``'s pipeline after the local intent
classifier (DIETClassifier) and before ``FallbackClassifier``. For each message it asks
its provider (Dialogflow ES, Wit.ai, Azure CLU) in the conversation's language and:

* the provider is confident (``confidence >= threshold``) and names an intent the
  training data knows (after ``intent_map``): its intent, ranking and entities are used;
* otherwise (below the threshold, an unknown intent, no intent, a timeout, a 5xx or
  429, bad credentials, an unreadable answer): the local classifier's result is kept.

Either way the message's parse data gets ``nlu_provider`` = ``{"name", "used",
"reason", "intent", "confidence"}`` (``reason``: ``confident``, ``low_confidence``,
``unknown_intent``, ``no_intent``, ``timeout``, ``unavailable``, ``auth``,
``bad_response``, ``error``), which actions read in ``tracker.latest_message`` and the
tracker store keeps with the ``UserUttered`` event.

The language: habla's DetectLanguage stage puts the turn's language in the message
metadata (``metadata["language"]["code"]``); when TranslateForNLU translated the text
for the local model, the user's words are in ``metadata["original_text"]``. A language
in ``languages`` (empty: every language) is sent as is, with the user's own words;
another one is sent as the (translated) text in ``default_language``.

Network calls: Rasa 3.6 runs the graph synchronously (``process`` cannot be awaited),
so the call here is a blocking one bounded by ``timeout_s``. habla never runs it on an
event loop: when a model has one of these components, nlu/engine.py runs the NLU graph
in a worker thread (:func:`has_remote_nlu`, ``RasaEngine.load``), in the server process
and in every engine worker alike.

Training: the component calls nothing; it only records the intents of the training
data (the model knows which provider intents the domain can take).

Credentials come from the environment only; ``config.yml`` names the variables, never
their values (:data:`SECRET_KEYS` in a component's config is refused).
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.exceptions import InvalidConfigException
from rasa.shared.nlu.constants import (
    ENTITIES,
    ENTITY_ATTRIBUTE_CONFIDENCE,
    ENTITY_ATTRIBUTE_END,
    ENTITY_ATTRIBUTE_START,
    ENTITY_ATTRIBUTE_TYPE,
    ENTITY_ATTRIBUTE_VALUE,
    EXTRACTOR,
    INTENT,
    INTENT_NAME_KEY,
    INTENT_RANKING_KEY,
    PREDICTED_CONFIDENCE_KEY,
    TEXT,
)
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from nlu.remote import FAILURES, OUTPUT_KEY

logger = logging.getLogger(__name__)

SECRET_KEYS = frozenset({"token", "access_token", "key", "api_key", "subscription_key"})


class ProviderFailure(Exception):
    """The provider gave no usable answer; ``reason`` is one of :data:`FAILURES`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def failure_for_status(status: int, provider: str, body: str = "") -> ProviderFailure:
    """An HTTP status as a failure: 401/403 auth, 408 timeout, 429/5xx unavailable."""
    detail = f"{provider} {status}: {body[:200]}".strip()
    if status in (401, 403):
        return ProviderFailure("auth", detail)
    if status == 408:
        return ProviderFailure("timeout", detail)
    if status == 429 or status >= 500:
        return ProviderFailure("unavailable", detail)
    return ProviderFailure("error", detail)


@dataclass
class Prediction:
    """A provider's answer in Rasa's terms (entities already carry start/end/value)."""

    intent: str
    confidence: float
    ranking: list[tuple[str, float]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Query:
    text: str
    language: str


class RemoteIntentClassifier(GraphComponent):
    """A remote NLU provider behind the local classifier. Adapters implement
    :meth:`detect` (build the request, send it, parse the answer)."""

    provider: ClassVar[str] = "remote"
    credential_envs: ClassVar[tuple[str, ...]] = ()
    """Config keys naming environment variables that must be set (for the check)."""

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            "threshold": 0.7,  # the provider's confidence needed to replace the local result
            "timeout_s": 3.0,  # per request, connect and read
            "languages": [],  # languages the provider's agent/app has; [] = every one
            "default_language": "en",  # sent for a language not in `languages`
            "locales": {},  # language -> the provider's locale code, e.g. {es: es-ES}
            "intent_map": {},  # provider intent -> Rasa intent
            "entity_map": {},  # provider entity -> Rasa entity
            "use_entities": True,  # when the provider is used, take its entities too
        }

    def __init__(
        self,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        known_intents: Iterable[str] = (),
    ) -> None:
        secrets = SECRET_KEYS & set(config)
        if secrets:
            raise InvalidConfigException(
                f"{type(self).__name__}: {', '.join(sorted(secrets))} must not be in "
                "config.yml; name the environment variable instead (see README, External NLU)"
            )
        self.config = config
        self.threshold = float(config["threshold"])
        self.timeout_s = float(config["timeout_s"])
        if self.timeout_s <= 0 or not 0.0 <= self.threshold <= 1.0:
            raise InvalidConfigException(
                f"{type(self).__name__}: timeout_s must be > 0 and threshold in [0, 1]"
            )
        self.languages = {str(x).lower() for x in config.get("languages") or ()}
        self.default_language = str(config["default_language"]).lower()
        self.locales = {str(k).lower(): str(v) for k, v in (config.get("locales") or {}).items()}
        self.intent_map = dict(config.get("intent_map") or {})
        self.entity_map = dict(config.get("entity_map") or {})
        self.use_entities = bool(config.get("use_entities", True))
        self.known_intents = frozenset(known_intents)
        self._model_storage, self._resource = model_storage, resource

    # ---------------------------------------------------------------- Rasa's graph API

    @classmethod
    def create(
        cls,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> RemoteIntentClassifier:
        return cls(config, model_storage, resource)

    @classmethod
    def load(
        cls,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> RemoteIntentClassifier:
        intents: list[str] = []
        try:
            with model_storage.read_from(resource) as directory:
                intents = json.loads((directory / "intents.json").read_text("utf-8"))
        except (ValueError, OSError):
            logger.warning("%s: no trained intents in the model", cls.provider)
        return cls(config, model_storage, resource, intents)

    def train(self, training_data: TrainingData) -> Resource:
        """No network: record the training data's intents (the ones the domain knows)."""
        self.known_intents = frozenset(training_data.intents)
        with self._model_storage.write_to(self._resource) as directory:
            (directory / "intents.json").write_text(json.dumps(sorted(self.known_intents)), "utf-8")
        return self._resource

    def process(self, messages: list[Message]) -> list[Message]:
        """Blocking (bounded by ``timeout_s``); habla runs it off the event loop."""
        for message in messages:
            self.process_one(message)
        return messages

    # ---------------------------------------------------------------- the decision

    def query_for(self, message: Message) -> Query:
        """The text and language to send: the user's own words in their language when
        the provider has it, else the (translated) text in the default language."""
        metadata = message.get("metadata") or {}
        language = metadata.get("language") if isinstance(metadata, Mapping) else None
        code = language.get("code") if isinstance(language, Mapping) else language
        code = str(code or "").lower()
        if code and (not self.languages or code in self.languages):
            original = metadata.get("original_text") if isinstance(metadata, Mapping) else None
            return Query(str(original or message.get(TEXT) or ""), code)
        return Query(str(message.get(TEXT) or ""), self.default_language)

    def locale(self, language: str) -> str:
        return self.locales.get(language, language)

    def process_one(self, message: Message) -> None:
        text = message.get(TEXT)
        if not isinstance(text, str) or not text.strip() or text.startswith("/"):
            return  # an empty message or a button payload / triggered intent
        query = self.query_for(message)
        record: dict[str, Any] = {"name": self.provider, "used": False, "language": query.language}
        started = time.monotonic()
        try:
            prediction = self.detect(query)
        except ProviderFailure as e:
            record["reason"], record["detail"] = e.reason, e.detail
        except Exception as e:  # an adapter bug or an SDK surprise: never lose the turn
            logger.exception("%s: unexpected failure", self.provider)
            record["reason"], record["detail"] = "error", f"{type(e).__name__}: {e}"[:300]
        else:
            self.decide(message, prediction, record)
        record["ms"] = round((time.monotonic() - started) * 1000, 1)
        if record["reason"] in FAILURES:
            logger.warning(
                "%s NLU not used (%s): %s; the local result is kept",
                self.provider,
                record["reason"],
                record.get("detail", ""),
            )
        message.set(OUTPUT_KEY, record, add_to_output=True)

    def decide(self, message: Message, prediction: Prediction, record: dict[str, Any]) -> None:
        intent = self.intent_map.get(prediction.intent, prediction.intent)
        record["intent"], record["confidence"] = intent, round(prediction.confidence, 4)
        if not intent:
            record["reason"] = "no_intent"
        elif self.known_intents and intent not in self.known_intents:
            record["reason"] = "unknown_intent"
        elif prediction.confidence < self.threshold:
            record["reason"] = "low_confidence"
        else:
            record["reason"], record["used"] = "confident", True
            self.apply(message, intent, prediction)

    def apply(self, message: Message, intent: str, prediction: Prediction) -> None:
        message.set(
            INTENT,
            {INTENT_NAME_KEY: intent, PREDICTED_CONFIDENCE_KEY: prediction.confidence},
            add_to_output=True,
        )
        ranking = [
            {INTENT_NAME_KEY: self.intent_map.get(name, name), PREDICTED_CONFIDENCE_KEY: conf}
            for name, conf in (prediction.ranking or [(prediction.intent, prediction.confidence)])
        ]
        message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
        if not self.use_entities or not prediction.entities:
            return
        ours = [self.entity(e) for e in prediction.entities]
        # the provider's entities win over local ones on the same words
        kept = [e for e in message.get(ENTITIES) or [] if not any(_overlap(e, o) for o in ours)]
        message.set(ENTITIES, kept + ours, add_to_output=True)

    def entity(self, found: dict[str, Any]) -> dict[str, Any]:
        out = dict(found)
        name = out[ENTITY_ATTRIBUTE_TYPE]
        out[ENTITY_ATTRIBUTE_TYPE] = self.entity_map.get(name, name)
        out[EXTRACTOR] = type(self).__name__
        return out

    # ---------------------------------------------------------------- adapters

    @abstractmethod
    def detect(self, query: Query) -> Prediction:
        """Ask the provider (blocking, within ``timeout_s``); raise ProviderFailure."""

    def env(self, name_key: str) -> str:
        """The value of the environment variable the config key ``name_key`` names."""
        return os.environ.get(str(self.config.get(name_key) or ""), "")


def make_entity(
    kind: str,
    value: Any,
    start: int | None = None,
    end: int | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    """An entity in Rasa's format (start/end only when the provider gave a span)."""
    out: dict[str, Any] = {ENTITY_ATTRIBUTE_TYPE: kind, ENTITY_ATTRIBUTE_VALUE: value}
    if start is not None and end is not None:
        out[ENTITY_ATTRIBUTE_START], out[ENTITY_ATTRIBUTE_END] = start, end
    if confidence is not None:
        out[ENTITY_ATTRIBUTE_CONFIDENCE] = confidence
    return out


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if ENTITY_ATTRIBUTE_START not in a or ENTITY_ATTRIBUTE_START not in b:
        return bool(a.get(ENTITY_ATTRIBUTE_TYPE) == b.get(ENTITY_ATTRIBUTE_TYPE))
    return bool(
        a[ENTITY_ATTRIBUTE_START] < b[ENTITY_ATTRIBUTE_END]
        and b[ENTITY_ATTRIBUTE_START] < a[ENTITY_ATTRIBUTE_END]
    )


def has_remote_nlu(processor: Any) -> bool:
    """Whether a loaded model's NLU graph holds a remote provider (its parse then runs
    in a worker thread, see nlu/engine.py)."""
    schema = getattr(getattr(processor, "model_metadata", None), "predict_schema", None)
    nodes = getattr(schema, "nodes", {}) or {}
    return any(
        isinstance(node.uses, type) and issubclass(node.uses, RemoteIntentClassifier)
        for node in nodes.values()
    )
