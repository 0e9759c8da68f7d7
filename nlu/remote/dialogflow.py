"""Dialogflow ES (v2) ``Sessions.DetectIntent`` through the official gRPC client.

Config (``config.yml``)::

    - name: nlu.remote.dialogflow.DialogflowIntentClassifier
      project_id: my-agent-project
      location: ""            # a regional agent (europe-west1), "" for global
      environment: ""         # a published environment, "" for the draft
      endpoint: ""            # host:port instead of Google's (regional, emulator)
      insecure: false         # plain-text gRPC to `endpoint` (a local fake only)
      credentials_env: DIALOGFLOW_CREDENTIALS_JSON

Credentials: a service-account JSON in the variable ``credentials_env`` names, else
Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``). Every query is
its own session (Rasa owns the dialogue; no Dialogflow contexts carry over). The
language is ``language_code``. Dialogflow ES returns parameters without positions: an
entity's start/end are where its value is found in the text, else left out.
"""

from __future__ import annotations

import json
import threading
import uuid
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

_GRPC_REASONS = {
    "DEADLINE_EXCEEDED": "timeout",
    "UNAUTHENTICATED": "auth",
    "PERMISSION_DENIED": "auth",
    "UNAVAILABLE": "unavailable",
    "RESOURCE_EXHAUSTED": "unavailable",
    "INTERNAL": "unavailable",
}


@DefaultV1Recipe.register(
    [
        DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER,
        DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR,
    ],
    is_trainable=True,
)
class DialogflowIntentClassifier(RemoteIntentClassifier):
    provider = "dialogflow"
    credential_envs = ()  # ADC also works: nothing is strictly required

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            **RemoteIntentClassifier.get_default_config(),
            "project_id": "",
            "location": "",
            "environment": "",
            "endpoint": "",
            "insecure": False,
            "credentials_env": "DIALOGFLOW_CREDENTIALS_JSON",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import grpc
        from google.auth import exceptions as auth_exceptions
        from google.cloud.dialogflow_v2 import SessionsClient
        from google.cloud.dialogflow_v2.services.sessions.transports import (
            SessionsGrpcTransport,
        )
        from google.oauth2 import service_account

        endpoint = str(self.config.get("endpoint") or "")
        location = str(self.config.get("location") or "")
        if self.config.get("insecure") and endpoint:
            channel = grpc.insecure_channel(endpoint)
            return SessionsClient(transport=SessionsGrpcTransport(channel=channel))
        if not endpoint and location and location != "global":
            endpoint = f"{location}-dialogflow.googleapis.com"
        options = {"api_endpoint": endpoint} if endpoint else None
        try:
            info = self.env("credentials_env")
            if info:
                credentials = service_account.Credentials.from_service_account_info(
                    json.loads(info),
                    scopes=["https://www.googleapis.com/auth/dialogflow"],
                )
                return SessionsClient(credentials=credentials, client_options=options)
            return SessionsClient(client_options=options)
        except (auth_exceptions.GoogleAuthError, ValueError) as e:
            raise ProviderFailure("auth", f"dialogflow credentials: {e}") from e

    def session(self) -> str:
        project = self.config.get("project_id")
        if not project:
            raise ProviderFailure("error", "dialogflow: project_id is not set in config.yml")
        location = self.config.get("location") or ""
        parent = f"projects/{project}"
        if location and location != "global":
            parent += f"/locations/{location}"
        environment = self.config.get("environment") or ""
        if environment:
            return f"{parent}/agent/environments/{environment}/users/-/sessions/{uuid.uuid4().hex}"
        return f"{parent}/agent/sessions/{uuid.uuid4().hex}"

    def detect(self, query: Query) -> Prediction:
        from google.api_core import exceptions as google_exceptions
        from google.auth import exceptions as auth_exceptions
        from google.cloud.dialogflow_v2 import DetectIntentResponse

        request = {
            "session": self.session(),
            "query_input": {
                "text": {"text": query.text[:256], "language_code": self.locale(query.language)}
            },
        }
        try:
            response = self.client().detect_intent(
                request=request, timeout=self.timeout_s, retry=None
            )
        except google_exceptions.GoogleAPICallError as e:
            code = getattr(e.grpc_status_code, "name", "") or ""
            if code in _GRPC_REASONS:
                reason = _GRPC_REASONS[code]
                raise ProviderFailure(reason, f"dialogflow {code}: {e.message}") from e
            raise failure_for_status(e.code or 500, "dialogflow", str(e.message)) from e
        except google_exceptions.RetryError as e:
            raise ProviderFailure("timeout", f"dialogflow: {e}") from e
        except auth_exceptions.GoogleAuthError as e:
            raise ProviderFailure("auth", f"dialogflow credentials: {e}") from e
        data = DetectIntentResponse.to_dict(response, preserving_proto_field_name=True)
        return self.parse(data.get("query_result") or {}, query.text)

    def parse(self, result: dict[str, Any], text: str) -> Prediction:
        intent = (result.get("intent") or {}).get("display_name") or ""
        confidence = float(result.get("intent_detection_confidence") or 0.0)
        if result.get("intent", {}).get("is_fallback"):
            intent = ""  # Dialogflow's own fallback intent: it did not understand
        entities = []
        for name, value in (result.get("parameters") or {}).items():
            for one in value if isinstance(value, list) else [value]:
                if one in ("", None, {}, []):
                    continue  # a parameter the text did not fill
                at = text.lower().find(str(one).lower()) if isinstance(one, str) else -1
                if at >= 0:
                    entities.append(make_entity(name, one, at, at + len(str(one))))
                else:
                    entities.append(make_entity(name, one))
        return Prediction(intent, confidence, [(intent, confidence)] if intent else [], entities)
