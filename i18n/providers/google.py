"""Google Cloud Translation v3 through the official async gRPC client.

With ``translator_url`` (host:port) it talks to that endpoint over an insecure channel
(an emulator or a local fake); otherwise to Google with Application Default Credentials.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import grpc
from google.api_core import exceptions as google_exceptions
from google.cloud.translate_v3 import TranslationServiceAsyncClient
from google.cloud.translate_v3.services.translation_service.transports import (
    TranslationServiceGrpcAsyncIOTransport,
)

from i18n.translation import Translator, status_error
from runtime.settings import Settings, SettingsError


class GoogleTranslator(Translator):
    name = "google"
    max_batch = 1024  # Google: up to 1,024 strings (30,000 code points recommended)

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(settings, session)
        if not settings.i18n.google_project:
            raise SettingsError(["HABLA_GOOGLE_PROJECT is required for the google translator"])
        self.parent = f"projects/{settings.i18n.google_project}/locations/global"
        self.url = settings.i18n.translator_url
        self.client: TranslationServiceAsyncClient | None = None

    async def start(self) -> None:
        if self.client is not None:
            return
        if self.url:
            channel = grpc.aio.insecure_channel(self.url)
            transport = TranslationServiceGrpcAsyncIOTransport(channel=channel)
            self.client = TranslationServiceAsyncClient(transport=transport)
        else:
            self.client = TranslationServiceAsyncClient()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.transport.close()
            self.client = None

    async def _translate_html(self, texts: list[str], source: str, target: str) -> list[str]:
        if self.client is None:
            await self.start()
        assert self.client is not None
        request: dict[str, Any] = {
            "parent": self.parent,
            "contents": texts,
            "mime_type": "text/html",
            "target_language_code": target,
        }
        if source:
            request["source_language_code"] = source
        response = await self.client.translate_text(
            request=request, retry=None, timeout=self.timeout_s
        )
        return [t.translated_text for t in response.translations]

    def map_error(self, error: Exception) -> Exception | None:
        # api_core gives each gRPC status its HTTP equivalent: UNAVAILABLE 503,
        # DEADLINE_EXCEEDED 504, RESOURCE_EXHAUSTED 429, INVALID_ARGUMENT 400, ...
        if isinstance(error, google_exceptions.GoogleAPICallError):
            return status_error(self.name, error.code or 500, error.message)
        if isinstance(error, google_exceptions.RetryError):
            return status_error(self.name, 503, str(error))
        return super().map_error(error)
