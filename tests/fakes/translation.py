"""Local fakes of the translation APIs that speak each real wire protocol.

Azure Translator v3.0, DeepL v2 and LibreTranslate are aiohttp apps; Google Cloud
Translation v3 is a gRPC server with the real ``TranslationService/TranslateText``
method. Each checks credentials and the HTML mode, rejects bad requests with the API's
own error shape, records every request and "translates" with a tiny dictionary, word by
word, outside ``translate="no"`` spans (which it leaves untouched, like the real
services). Numbers outside those spans are localised (19.90 → 19,90 for es/pt), so an
unprotected price shows. Failures can be scripted for the next requests.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from aiohttp import web
from google.cloud import translate_v3

from tests.fakes.server import serve

EN_ES = {
    "hello": "hola",
    "the": "el",
    "price": "precio",
    "is": "es",
    "and": "y",
    "shipping": "envío",
    "costs": "cuesta",
    "your": "tu",
    "order": "pedido",
    "ready": "listo",
    "write": "escribe",
    "to": "a",
    "or": "o",
    "visit": "visita",
    "name": "nombre",
    "shop": "tienda",
    "example": "ejemplo",
    "thanks": "gracias",
}
EN_PT = {
    "hello": "olá",
    "the": "o",
    "price": "preço",
    "is": "é",
    "and": "e",
    "shipping": "frete",
    "costs": "custa",
    "your": "seu",
    "order": "pedido",
    "ready": "pronto",
    "name": "nome",
    "shop": "loja",
    "thanks": "obrigado",
}
EN_FR = {
    "we're": "nous sommes",
    "open": "ouverts",
    "monday": "lundi",
    "friday": "vendredi",
    "saturday": "samedi",
    "to": "au",
    "and": "et",
    "closed": "fermés",
    "on": "le",
    "sundays": "dimanches",
    "public": "jours",
    "holidays": "fériés",
    "hours": "horaires",
    "opening": "ouverture",
    "what": "quels",
    "are": "sont",
    "your": "vos",
    "hi": "bonjour",
    "shipping": "livraison",
    "talk": "parler",
    "person": "personne",
    "a": "une",
}
DICTIONARY: dict[tuple[str, str], dict[str, str]] = {
    ("en", "fr"): EN_FR,
    ("fr", "en"): {v: k for k, v in EN_FR.items() if " " not in v},
    ("en", "es"): EN_ES,
    ("en", "pt"): EN_PT,
    ("es", "en"): {v: k for k, v in EN_ES.items()},
    ("pt", "en"): {v: k for k, v in EN_PT.items()},
}

_SKIPPED = re.compile(r"(<span[^>]*\btranslate=\"no\"[^>]*>.*?</span>|<[^>]+>)", re.S)
_WORD = re.compile(r"(?<![&#\w])[^\W\d_]+")
_DECIMAL = re.compile(r"(\d)\.(\d)")


def detect(html_text: str) -> str:
    """The fake's language detection: Spanish or Portuguese words, else English."""
    words = {w.lower() for w in _WORD.findall(html_text)}
    for lang, table in (("es", EN_ES), ("pt", EN_PT)):
        if words & set(table.values()) - {"a", "o", "e"}:
            return lang
    return "en"


def fake_translate(html_text: str, source: str, target: str) -> str:
    """Dictionary translation of the text outside tags and ``translate="no"`` spans."""
    table = DICTIONARY.get((source or detect(html_text), target), {})

    def word(m: re.Match[str]) -> str:
        w = m.group()
        out = table.get(w.lower())
        if out is None:
            return w
        return out.capitalize() if w[0].isupper() else out

    parts = _SKIPPED.split(html_text)
    for i in range(0, len(parts), 2):
        text = _WORD.sub(word, parts[i])
        parts[i] = _DECIMAL.sub(r"\1,\2", text) if target in ("es", "pt") else text
    return "".join(parts)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: Any


class FakeHttpTranslator(ABC):
    """Shared machinery of the HTTP fakes; subclasses check and answer one API."""

    path: ClassVar[str]

    def __init__(self, key: str) -> None:
        self.key = key
        self.requests: list[Recorded] = []
        self.failures: list[int] = []
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` (the API's error shape)."""
        self.failures.extend([status] * count)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post(self.path, self.handle)
        self.runner, self.url = await serve(app)
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        self.requests.append(
            Recorded(request.path, dict(request.headers), dict(request.query), body)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        problem = self.check_auth(request, body)
        if problem is not None:
            return problem
        if self.failures:
            status = self.failures.pop(0)
            headers = {"Retry-After": "1"} if status == 429 else {}
            return self.error(status, f"scripted failure {status}", headers=headers)
        return self.answer(request, body)

    @abstractmethod
    def error(
        self, status: int, message: str, code: int = 0, headers: dict[str, str] | None = None
    ) -> web.Response:
        """An error in the API's own shape."""

    @abstractmethod
    def check_auth(self, request: web.Request, body: Any) -> web.Response | None:
        """An error response when the request's credentials are wrong."""

    @abstractmethod
    def answer(self, request: web.Request, body: Any) -> web.Response:
        """The API's answer to a valid request."""


class FakeAzureTranslator(FakeHttpTranslator):
    """Azure Translator v3.0: ``POST /translate?api-version=3.0&to=..&textType=html``."""

    path = "/translate"
    TARGETS = {"en", "es", "pt", "pt-pt", "de", "fr", "it"}

    def __init__(self, key: str, region: str = "") -> None:
        super().__init__(key)
        self.region = region

    def error(
        self, status: int, message: str, code: int = 0, headers: dict[str, str] | None = None
    ) -> web.Response:
        code = code or status * 1000
        body = {"error": {"code": code, "message": message}}
        return web.json_response(body, status=status, headers=headers)

    def check_auth(self, request: web.Request, body: Any) -> web.Response | None:
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
            return self.error(
                401,
                "The request is not authorized because credentials are missing or invalid.",
                401000,
            )
        if self.region and request.headers.get("Ocp-Apim-Subscription-Region") != self.region:
            return self.error(401, "The region of the subscription is missing or invalid.", 401015)
        return None

    def answer(self, request: web.Request, body: Any) -> web.Response:
        q = request.query
        if q.get("api-version") != "3.0":
            return self.error(400, "The API version parameter is missing or invalid.", 400021)
        if q.get("to") not in self.TARGETS:
            return self.error(400, "The target language is not valid.", 400036)
        if q.get("from", "en") not in self.TARGETS:
            return self.error(400, "The source language is not valid.", 400035)
        if q.get("textType") != "html":
            return self.error(400, "The fake expects textType=html.", 400000)
        if not isinstance(body, list) or not all(
            isinstance(item, dict) and isinstance(item.get("Text"), str) for item in body
        ):
            return self.error(400, "The body of the request is not valid JSON.", 400074)
        source, target = q.get("from", ""), q["to"]
        out = []
        for item in body:
            entry: dict[str, Any] = {
                "translations": [
                    {"text": fake_translate(item["Text"], source, target), "to": target}
                ]
            }
            if not source:
                entry["detectedLanguage"] = {"language": detect(item["Text"]), "score": 1.0}
            out.append(entry)
        return web.json_response(out)


class FakeDeepL(FakeHttpTranslator):
    """DeepL API v2: ``POST /v2/translate`` with ``Authorization: DeepL-Auth-Key``."""

    path = "/v2/translate"
    TARGETS = {"EN-GB", "EN-US", "ES", "PT-PT", "PT-BR", "DE", "FR", "IT"}
    SOURCES = {"EN", "ES", "PT", "DE", "FR", "IT"}

    def error(
        self, status: int, message: str, code: int = 0, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response({"message": message}, status=status, headers=headers)

    def check_auth(self, request: web.Request, body: Any) -> web.Response | None:
        if request.headers.get("Authorization") != f"DeepL-Auth-Key {self.key}":
            return self.error(403, "Forbidden")
        return None

    def answer(self, request: web.Request, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return self.error(400, "Invalid request: expected a JSON object")
        texts = body.get("text")
        if not isinstance(texts, list) or not texts or len(texts) > 50:
            return self.error(400, "Parameter 'text' not specified.")
        if body.get("target_lang") not in self.TARGETS:
            return self.error(400, "Value for 'target_lang' not supported.")
        if "source_lang" in body and body["source_lang"] not in self.SOURCES:
            return self.error(400, "Value for 'source_lang' not supported.")
        if body.get("tag_handling") != "html":
            return self.error(400, "The fake expects tag_handling=html.")
        target = str(body["target_lang"]).split("-")[0].lower()
        out = []
        for text in texts:
            source = str(body.get("source_lang", "")).lower() or detect(text)
            out.append(
                {
                    "detected_source_language": source.upper(),
                    "text": fake_translate(text, source, target),
                }
            )
        return web.json_response({"translations": out})


class FakeLibreTranslate(FakeHttpTranslator):
    """LibreTranslate: ``POST /translate`` with ``q``, ``source``, ``target``, ``format``."""

    path = "/translate"
    LANGUAGES = {"en", "es", "pt", "de", "fr", "it"}

    def error(
        self, status: int, message: str, code: int = 0, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response({"error": message}, status=status, headers=headers)

    def check_auth(self, request: web.Request, body: Any) -> web.Response | None:
        if self.key and (not isinstance(body, dict) or body.get("api_key") != self.key):
            return self.error(403, "Invalid API key")
        return None

    def answer(self, request: web.Request, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return self.error(400, "Invalid request: missing q parameter")
        for field in ("q", "source", "target"):
            if not body.get(field):
                return self.error(400, f"Invalid request: missing {field} parameter")
        source, target = body["source"], body["target"]
        if source != "auto" and source not in self.LANGUAGES:
            return self.error(400, f"{source} is not supported")
        if target not in self.LANGUAGES:
            return self.error(400, f"{target} is not supported")
        if body.get("format") != "html":
            return self.error(400, "The fake expects format=html.")
        q = body["q"]
        texts = q if isinstance(q, list) else [q]
        src = "" if source == "auto" else source
        done = [fake_translate(str(t), src, target) for t in texts]
        out: dict[str, Any] = {"translatedText": done if isinstance(q, list) else done[0]}
        if source == "auto":
            detected = [{"confidence": 90.0, "language": detect(str(t))} for t in texts]
            out["detectedLanguage"] = detected if isinstance(q, list) else detected[0]
        return web.json_response(out)


class FakeGoogleTranslate:
    """Google Cloud Translation v3 ``TranslateText`` over gRPC (insecure, loopback).

    Like Google it answers quotes in translated text as HTML entities (``&#39;``).
    """

    SERVICE = "google.cloud.translation.v3.TranslationService"
    LANGUAGES = {"en", "es", "pt", "de", "fr", "it"}

    def __init__(self, project: str) -> None:
        self.project = project
        self.requests: list[translate_v3.TranslateTextRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.failures: list[grpc.StatusCode] = []
        self.server: Any = None
        self.target = ""

    def fail_next(self, code: grpc.StatusCode, count: int = 1) -> None:
        self.failures.extend([code] * count)

    @property
    def last(self) -> translate_v3.TranslateTextRequest:
        return self.requests[-1]

    async def start(self) -> str:
        handler = grpc.method_handlers_generic_handler(
            self.SERVICE,
            {
                "TranslateText": grpc.unary_unary_rpc_method_handler(
                    self.translate_text,
                    request_deserializer=translate_v3.TranslateTextRequest.deserialize,
                    response_serializer=translate_v3.TranslateTextResponse.serialize,
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
        if self.server is not None:
            await self.server.stop(None)

    async def translate_text(
        self, request: translate_v3.TranslateTextRequest, context: Any
    ) -> translate_v3.TranslateTextResponse:
        self.requests.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        if request.parent not in (
            f"projects/{self.project}/locations/global",
            f"projects/{self.project}",
        ):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'cloudtranslate.generalModels.predict' denied on resource "
                f"'{request.parent}' (or it may not exist).",
            )
        if request.mime_type != "text/html":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The fake expects text/html.")
        if request.target_language_code not in self.LANGUAGES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Target language is invalid.")
        if not request.contents:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Empty contents.")
        translations = []
        for text in request.contents:
            source = request.source_language_code or detect(text)
            done = fake_translate(text, source, request.target_language_code)
            parts = _SKIPPED.split(done)
            parts[::2] = [p.replace("'", "&#39;").replace('"', "&quot;") for p in parts[::2]]
            translations.append(
                translate_v3.Translation(
                    translated_text="".join(parts),
                    detected_language_code="" if request.source_language_code else source,
                )
            )
        return translate_v3.TranslateTextResponse(translations=translations)
