"""Azure AI Translator, REST API v3.0 (``POST /translate?api-version=3.0``)."""

from __future__ import annotations

from typing import ClassVar

from i18n.translation import HttpTranslator


class AzureTranslator(HttpTranslator):
    name = "azure"
    default_base: ClassVar[str] = "https://api.cognitive.microsofttranslator.com"
    max_batch = 1000  # Azure: up to 1,000 elements (50,000 characters) per request

    async def _translate_html(self, texts: list[str], source: str, target: str) -> list[str]:
        params = {"api-version": "3.0", "to": target, "textType": "html"}
        if source:
            params["from"] = source
        headers = {"Ocp-Apim-Subscription-Key": self.key}
        if self.settings.i18n.translator_region:
            headers["Ocp-Apim-Subscription-Region"] = self.settings.i18n.translator_region
        body = await self._post_json(
            f"{self.base}/translate", [{"Text": t} for t in texts], headers, params
        )
        return [str(item["translations"][0]["text"]) for item in body]
