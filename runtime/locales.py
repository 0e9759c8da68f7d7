"""Language codes for the cloud speech engines: the bot speaks ISO 639-1 (``es``); Google
and Azure want a locale (``es-ES``). One table, overridable per engine
(``language_codes``), so authors pick ``pt-PT`` or ``es-MX`` where it matters."""

from __future__ import annotations

from collections.abc import Mapping

LOCALES: dict[str, str] = {
    "ca": "ca-ES",
    "de": "de-DE",
    "en": "en-US",
    "es": "es-ES",
    "fr": "fr-FR",
    "it": "it-IT",
    "nl": "nl-NL",
    "pl": "pl-PL",
    "pt": "pt-BR",
    "ja": "ja-JP",
    "ko": "ko-KR",
    "zh": "zh-CN",
}


def to_locale(
    language: str,
    overrides: Mapping[str, str] | None = None,
    table: Mapping[str, str] = LOCALES,
) -> str:
    """``es`` → ``es-ES`` (``overrides`` first, then ``table``); a code that is already a
    locale (``pt-PT``) is kept."""
    code = language.strip().replace("_", "-")
    if "-" in code:
        return code
    code = code.lower()
    return (overrides or {}).get(code) or table.get(code) or code


def to_language(locale: str) -> str | None:
    """``es-es`` / ``es-ES`` → ``es``; None for an empty code."""
    return locale.strip().replace("_", "-").split("-", 1)[0].lower() or None
