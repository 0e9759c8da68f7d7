"""Local fakes of three NLU APIs, speaking their real protocols.

* :class:`FakeDialogflow`: ``google.cloud.dialogflow.v2.Sessions/DetectIntent`` over
  gRPC (a ``grpc.aio`` server on 127.0.0.1 with the package's own proto-plus messages as
  (de)serializers; the package ships no servicer classes). Like Dialogflow it refuses
  a query without ``language_code`` or text, or a session outside ``projects/<id>/``.
* :class:`FakeWit`: ``GET /message?v=...&q=...`` with ``Authorization: Bearer``; 400
  without ``v`` or ``q``, 401 with a wrong token (Wit's ``no-auth`` body).
* :class:`FakeCLU`: ``POST /language/:analyze-conversations?api-version=...`` with
  ``Ocp-Apim-Subscription-Key``; 401 with a wrong key (Azure's body), 404 for an
  unknown project or deployment, 400 without ``api-version``.

Each records what it received and answers what a test scripted for a text; a text
nobody scripted gets the provider's "not understood" answer. Outages and slow answers
come from :class:`tests.fakes.server.FakeAPI` (and :meth:`FakeDialogflow.fail_next`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.cloud.dialogflow_v2 import DetectIntentRequest, DetectIntentResponse

from tests.fakes.server import FakeAPI


@dataclass
class Answer:
    """What a provider understands in a text."""

    intent: str
    confidence: float
    entities: dict[str, Any] = field(default_factory=dict)  # name -> value (or (value, text))
    others: list[tuple[str, float]] = field(default_factory=list)


class FakeDialogflow:
    SERVICE = "google.cloud.dialogflow.v2.Sessions"

    def __init__(self, project: str = "shop-agent") -> None:
        self.project = project
        self.answers: dict[str, Answer] = {}
        self.requests: list[DetectIntentRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.failures: list[grpc.StatusCode] = []
        self.hold_s = 0.0
        self.server: Any = None
        self.target = ""
        self._closing = asyncio.Event()

    def fail_next(self, code: grpc.StatusCode, count: int = 1) -> None:
        self.failures.extend([code] * count)

    async def start(self) -> str:
        handler = grpc.method_handlers_generic_handler(
            self.SERVICE,
            {
                "DetectIntent": grpc.unary_unary_rpc_method_handler(
                    self.detect_intent,
                    request_deserializer=DetectIntentRequest.deserialize,
                    response_serializer=DetectIntentResponse.serialize,
                )
            },
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.target = f"127.0.0.1:{port}"
        return self.target

    async def close(self) -> None:
        self._closing.set()
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    async def detect_intent(
        self, request: DetectIntentRequest, context: Any
    ) -> DetectIntentResponse:
        self.requests.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if self.hold_s:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.hold_s)
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        if not request.session.startswith(f"projects/{self.project}/"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No agent for {request.session}")
        text = request.query_input.text
        if not text.language_code:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing language_code.")
        if not text.text:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Input text not set.")
        answer = self.answers.get(text.text)
        result: dict[str, Any] = {"query_text": text.text, "language_code": text.language_code}
        if answer is None:
            result |= {
                "intent": {"display_name": "Default Fallback Intent", "is_fallback": True},
                "intent_detection_confidence": 1.0,
            }
        else:
            result |= {
                "intent": {"display_name": answer.intent},
                "intent_detection_confidence": answer.confidence,
                "parameters": {k: v for k, v in answer.entities.items()},
            }
        return DetectIntentResponse(response_id="fake", query_result=result)


class FakeWit(FakeAPI):
    def __init__(self, tokens: dict[str, str]) -> None:
        """``tokens``: the Server Access Token of each app (app name → token)."""
        super().__init__()
        self.tokens = tokens
        self.answers: dict[str, Answer] = {}
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/message", self.message)
        return app

    async def message(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        app = next((a for a, t in self.tokens.items() if auth == f"Bearer {t}"), None)
        self.requests.append({"app": app, "params": dict(request.query), "auth": auth})
        await self.hold()
        if self.down.refuses():
            return web.json_response({"error": "Service unavailable"}, status=self.down.status)
        if app is None:
            body = {"error": "Bad auth, check token/params", "code": "no-auth"}
            return web.json_response(body, status=401)
        if "v" not in request.query or "q" not in request.query:
            return web.json_response({"error": "Missing v or q", "code": "bad-request"}, status=400)
        q = request.query["q"]
        answer = self.answers.get(q)
        if answer is None:
            return web.json_response({"text": q, "intents": [], "entities": {}, "traits": {}})
        intents = [{"id": "1", "name": answer.intent, "confidence": answer.confidence}]
        intents += [
            {"id": str(i + 2), "name": n, "confidence": c} for i, (n, c) in enumerate(answer.others)
        ]
        entities: dict[str, list[dict[str, Any]]] = {}
        for name, value in answer.entities.items():
            value, body = value if isinstance(value, tuple) else (value, value)
            start = q.lower().find(body.lower())
            entities[f"{name}:{name}"] = [
                {
                    "id": "9",
                    "name": name,
                    "role": name,
                    "start": start,
                    "end": start + len(body),
                    "body": q[start : start + len(body)],
                    "confidence": 0.97,
                    "entities": {},
                    "value": value,
                    "type": "value",
                }
            ]
        return web.json_response(
            {"text": q, "intents": intents, "entities": entities, "traits": {}}
        )


class FakeCLU(FakeAPI):
    API_VERSIONS = ("2022-05-01", "2023-04-01")

    def __init__(self, key: str, project: str = "shop", deployment: str = "production") -> None:
        super().__init__()
        self.key, self.project, self.deployment = key, project, deployment
        self.answers: dict[str, Answer] = {}
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/language/:analyze-conversations", self.analyze)
        return app

    async def analyze(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        self.requests.append(
            {
                "key": request.headers.get("Ocp-Apim-Subscription-Key", ""),
                "api_version": request.query.get("api-version", ""),
                "body": body,
            }
        )
        await self.hold()
        if self.down.refuses():
            return web.json_response(
                {"error": {"code": "ServiceUnavailable", "message": "Try again later."}},
                status=self.down.status,
            )
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
            return web.json_response(
                {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription key or wrong "
                        "API endpoint. Make sure to provide a valid key for an active "
                        "subscription and use a correct regional API endpoint for your "
                        "resource.",
                    }
                },
                status=401,
            )
        if request.query.get("api-version") not in self.API_VERSIONS:
            return web.json_response(
                {"error": {"code": "UnsupportedApiVersion", "message": "bad api-version"}},
                status=400,
            )
        params = body.get("parameters") or {} if isinstance(body, dict) else {}
        if (params.get("projectName"), params.get("deploymentName")) != (
            self.project,
            self.deployment,
        ):
            return web.json_response(
                {"error": {"code": "NotFound", "message": "project or deployment not found"}},
                status=404,
            )
        item = body["analysisInput"]["conversationItem"]
        text = item["text"]
        answer = self.answers.get(text) or Answer("None", 0.9)
        entities = []
        for name, value in answer.entities.items():
            value, words = value if isinstance(value, tuple) else (value, value)
            at = text.lower().find(words.lower())
            entity: dict[str, Any] = {
                "category": name,
                "text": text[at : at + len(words)],
                "offset": at,
                "length": len(words),
                "confidenceScore": 1,
            }
            if value != words:
                entity["extraInformation"] = [{"extraInformationKind": "ListKey", "key": value}]
            entities.append(entity)
        intents = [{"category": answer.intent, "confidenceScore": answer.confidence}]
        intents += [{"category": n, "confidenceScore": c} for n, c in answer.others]
        return web.json_response(
            {
                "kind": "ConversationResult",
                "result": {
                    "query": text,
                    "prediction": {
                        "projectKind": "Conversation",
                        "topIntent": answer.intent,
                        "intents": intents,
                        "entities": entities,
                    },
                },
            }
        )
