"""Translator adapters (registered by name in ``runtime/providers.py`` TRANSLATORS)."""

from i18n.providers.azure import AzureTranslator
from i18n.providers.deepl import DeepLTranslator
from i18n.providers.google import GoogleTranslator
from i18n.providers.libretranslate import LibreTranslateTranslator

__all__ = ["AzureTranslator", "DeepLTranslator", "GoogleTranslator", "LibreTranslateTranslator"]
