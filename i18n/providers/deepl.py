"""DeepL API v2 (``POST /v2/translate``, JSON body, ``DeepL-Auth-Key`` header)."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from i18n.translation import HttpTranslator
from runtime.settings import Settings

FREE_BASE = "https://api-free.deepl.com"
PRO_BASE = "https://api.deepl.com"


class DeepLTranslator(HttpTranslator):
    name = "deepl"
    max_batch = 50  # DeepL: up to 50 texts per request
    # DeepL wants a variant for these targets; a target with a region ("pt-br") is sent as is
    target_variants: ClassVar[dict[str, str]] = {"pt": "PT-PT", "en": "EN-GB"}

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(settings, session)
        if not settings.i18n.translator_url:
            self.base = FREE_BASE if self.key.endswith(":fx") else PRO_BASE

    def target_lang(self, target: str) -> str:
        return self.target_variants.get(target, target).upper()

    async def _translate_html(self, texts: list[str], source: str, target: str) -> list[str]:
        payload: dict[str, object] = {
            "text": texts,
            "target_lang": self.target_lang(target),
            "tag_handling": "html",
        }
        if source:
            payload["source_lang"] = source.split("-")[0].upper()
        headers = {"Authorization": f"DeepL-Auth-Key {self.key}"}
        body = await self._post_json(f"{self.base}/v2/translate", payload, headers)
        return [str(t["text"]) for t in body["translations"]]
