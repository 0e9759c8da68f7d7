"""Azure AI Language Conversational Language Understanding (CLU) through the official
``azure-ai-language-conversations`` client (``analyze_conversation``).

Config (``config.yml``)::

    - name: nlu.remote.clu.CLUIntentClassifier
      project_name: shop
      deployment_name: production
      endpoint_env: AZURE_LANGUAGE_ENDPOINT   # https://<resource>.cognitiveservices.azure.com
      key_env: AZURE_LANGUAGE_KEY             # the resource key (Ocp-Apim-Subscription-Key)
      api_version: "2023-04-01"

The language goes in the conversation item's ``language``; offsets are asked for in
Unicode code points (Python's string indices). A list entity's value is its list key
(the canonical value), any other's the matched text. The client's own retries are off:
the latency budget is ``timeout_s``, and the local result is the fallback.
"""

from __future__ import annotations

import threading
from typing import Any

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
class CLUIntentClassifier(RemoteIntentClassifier):
    provider = "clu"
    credential_envs = ("endpoint_env", "key_env")

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            **RemoteIntentClassifier.get_default_config(),
            "project_name": "",
            "deployment_name": "",
            "endpoint_env": "AZURE_LANGUAGE_ENDPOINT",
            "key_env": "AZURE_LANGUAGE_KEY",
            "api_version": "2023-04-01",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        from azure.ai.language.conversations import ConversationAnalysisClient
        from azure.core.credentials import AzureKeyCredential

        with self._lock:
            if self._client is None:
                endpoint, key = self.env("endpoint_env"), self.env("key_env")
                if not endpoint or not key:
                    missing = [
                        str(self.config[k]) for k in ("endpoint_env", "key_env") if not self.env(k)
                    ]
                    raise ProviderFailure("auth", f"clu: {', '.join(missing)} not set")
                self._client = ConversationAnalysisClient(
                    endpoint.rstrip("/"),
                    AzureKeyCredential(key),
                    api_version=str(self.config["api_version"]),
                    retry_total=0,
                )
            return self._client

    def detect(self, query: Query) -> Prediction:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )

        task = {
            "kind": "Conversation",
            "analysisInput": {
                "conversationItem": {
                    "id": "1",
                    "participantId": "user",
                    "text": query.text,
                    "language": self.locale(query.language),
                    "modality": "text",
                }
            },
            "parameters": {
                "projectName": self.config["project_name"],
                "deploymentName": self.config["deployment_name"],
                "stringIndexType": "UnicodeCodePoint",
                "verbose": True,
            },
        }
        try:
            result = self.client().analyze_conversation(
                task, connection_timeout=self.timeout_s, read_timeout=self.timeout_s
            )
        except ClientAuthenticationError as e:
            raise ProviderFailure("auth", f"clu: {e.status_code}: {e.message}") from e
        except HttpResponseError as e:
            raise failure_for_status(e.status_code or 500, "clu", str(e.message)) from e
        except ServiceResponseTimeoutError as e:
            raise ProviderFailure("timeout", f"clu: no answer in {self.timeout_s:g} s") from e
        except (ServiceRequestError, ServiceResponseError) as e:
            reason = "timeout" if "timed out" in str(e).lower() else "unavailable"
            raise ProviderFailure(reason, f"clu: {type(e).__name__}: {e}") from e
        try:
            return self.parse(result["result"]["prediction"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProviderFailure("bad_response", f"clu: {type(e).__name__}: {e}") from e

    def parse(self, prediction: dict[str, Any]) -> Prediction:
        if prediction.get("projectKind", "Conversation") != "Conversation":
            raise ProviderFailure(
                "bad_response", f"clu: project kind {prediction['projectKind']} is not supported"
            )
        ranking = [
            (str(i["category"]), float(i.get("confidenceScore", 0.0)))
            for i in prediction.get("intents") or []
        ]
        ranking.sort(key=lambda r: r[1], reverse=True)
        top = str(prediction.get("topIntent") or (ranking[0][0] if ranking else ""))
        confidence = dict(ranking).get(top, 0.0)
        if top == "None":
            top = ""  # CLU's own "None" intent: it did not understand
        entities = []
        for e in prediction.get("entities") or []:
            keys = [
                x["key"]
                for x in e.get("extraInformation") or []
                if x.get("extraInformationKind") == "ListKey"
            ]
            start = int(e["offset"])
            entities.append(
                make_entity(
                    str(e["category"]),
                    keys[0] if keys else e["text"],
                    start,
                    start + int(e["length"]),
                    e.get("confidenceScore"),
                )
            )
        return Prediction(top, confidence, ranking, entities)
