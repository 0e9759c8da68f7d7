"""LibreTranslate (``POST /translate``, JSON body). There is no public default endpoint."""

from __future__ import annotations

import aiohttp

from i18n.translation import HttpTranslator
from runtime.settings import Settings, SettingsError


class LibreTranslateTranslator(HttpTranslator):
    name = "libretranslate"

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        if not settings.i18n.translator_url:
            raise SettingsError(
                [
                    "HABLA_TRANSLATOR_URL is required for the libretranslate translator "
                    "(the URL of your LibreTranslate server; there is no public default)"
                ]
            )
        super().__init__(settings, session)

    async def _translate_html(self, texts: list[str], source: str, target: str) -> list[str]:
        payload: dict[str, object] = {
            "q": texts,
            "source": source or "auto",
            "target": target,
            "format": "html",
        }
        if self.key:
            payload["api_key"] = self.key
        body = await self._post_json(f"{self.base}/translate", payload)
        return [str(t) for t in body["translatedText"]]
