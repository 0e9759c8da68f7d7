"""Wit.ai ``GET /message`` over HTTP (``requests``: Rasa's graph is synchronous).

Config (``config.yml``)::

    - name: nlu.remote.wit.WitIntentClassifier
      token_env: WIT_ACCESS_TOKEN       # the app's Server Access Token, from the env
      apps: {es: WIT_ACCESS_TOKEN_ES}   # one Wit app per language: its token's variable
      version: "20240304"               # the API version (the `v` parameter)
      base_url: https://api.wit.ai

A Wit app understands one language, so a language in ``apps`` is sent to that app,
any other to the ``token_env`` app (in ``default_language`` when ``languages`` does
not list it). The language also goes in ``context.locale`` (``es_ES``), which Wit
uses for dates and times. Wit's entities carry ``start``/``end``/``body``/``value``;
an entity ``name:role`` becomes ``name`` with Rasa's ``role`` when they differ
(``entity_map`` renames).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import requests
from rasa.engine.recipes.default_recipe import DefaultV1Recipe

from nlu.remote.base import (
    Prediction,
    ProviderFailure,
    Query,
    RemoteIntentClassifier,
    failure_for_status,
    make_entity,
)


@DefaultV1Recipe.register(
    [
        DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER,
        DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR,
    ],
    is_trainable=True,
)
class WitIntentClassifier(RemoteIntentClassifier):
    provider = "wit"
    credential_envs = ("token_env",)

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            **RemoteIntentClassifier.get_default_config(),
            "token_env": "WIT_ACCESS_TOKEN",
            "apps": {},
            "version": "20240304",
            "base_url": "https://api.wit.ai",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.apps = {str(k).lower(): str(v) for k, v in (self.config.get("apps") or {}).items()}
        self.base_url = str(self.config["base_url"]).rstrip("/")
        if self.languages:  # a language with its own app is one the provider has
            self.languages |= set(self.apps)
        self._local = threading.local()  # a requests.Session per graph thread

    def token(self, language: str) -> str:
        name = self.apps.get(language) or str(self.config.get("token_env") or "")
        value = os.environ.get(name, "")
        if not value:
            raise ProviderFailure("auth", f"wit: the environment variable {name} is not set")
        return value

    def http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def detect(self, query: Query) -> Prediction:
        locale = self.locale(query.language).replace("-", "_")
        params = {
            "v": str(self.config["version"]),
            "q": query.text[:280],  # Wit takes at most 280 characters
            "context": json.dumps({"locale": locale}),
        }
        headers = {"Authorization": f"Bearer {self.token(query.language)}"}
        try:
            response = self.http().get(
                f"{self.base_url}/message", params=params, headers=headers, timeout=self.timeout_s
            )
        except requests.Timeout as e:
            raise ProviderFailure("timeout", f"wit: no answer in {self.timeout_s:g} s") from e
        except requests.RequestException as e:
            raise ProviderFailure("unavailable", f"wit: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise failure_for_status(response.status_code, "wit", response.text)
        try:
            return self.parse(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ProviderFailure("bad_response", f"wit: {type(e).__name__}: {e}") from e

    def parse(self, data: dict[str, Any]) -> Prediction:
        intents = sorted(
            data.get("intents") or [], key=lambda i: float(i.get("confidence", 0)), reverse=True
        )
        ranking = [(str(i["name"]), float(i.get("confidence", 0.0))) for i in intents]
        top, confidence = ranking[0] if ranking else ("", 0.0)
        entities = []
        for key, found in (data.get("entities") or {}).items():
            for e in found:
                name = str(e.get("name") or key.split(":")[0])
                value = e.get("value", e.get("body"))
                entity = make_entity(name, value, e.get("start"), e.get("end"), e.get("confidence"))
                if e.get("role") and e["role"] != name:
                    entity["role"] = e["role"]
                entities.append(entity)
        return Prediction(top, confidence, ranking, entities)
