"""Small text helpers shared by the stages."""

from __future__ import annotations

import unicodedata


def strip_accents(text: str) -> str:
    """ "¿Cómo está?" → "¿Como esta?" (for matching requests in any language)."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
