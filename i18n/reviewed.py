"""Translations a person reviews: ``translations/<language>.yml`` in the bot folder.

``habla translate --to fr`` writes one file per language with a machine translation of
every response variant of the source language (texts and button titles; payloads,
``channel`` and ``custom`` copied as they are)::

    language: fr
    source: en
    responses:
      utter_greet:
        - text: "Bonjour ! Je suis l'assistant de la boutique."
          buttons:
            - {title: "Horaires", payload: "/opening_hours"}
          source_hash: 3f2a9c01d4e5        # of the source variant's text and titles
          machine: true                    # a reviewer deletes this (or sets reviewed: true)

A variant is *reviewed* when it has no ``machine: true`` (or has ``reviewed: true``),
and *stale* when no source variant has its ``source_hash`` any more (the source text
changed since). At run time (:class:`ReviewedTranslations`, used by
``i18n/stages.py`` ``LocalizeReplies``) a reviewed, current variant replaces the
source-language reply before any machine translation; ``habla validate`` lists the
unreviewed and stale ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TRANSLATIONS_DIR = "translations"
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def source_hash(variant: Mapping[str, Any]) -> str:
    """What a translation was made from: the variant's text and button titles."""
    parts = [str(variant.get("text") or "")]
    parts += [str(b.get("title") or "") for b in variant.get("buttons") or []]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def is_reviewed(variant: Mapping[str, Any]) -> bool:
    return variant.get("reviewed") is True or not variant.get("machine")


def variant_languages(variant: Mapping[str, Any]) -> list[str]:
    """The values of the variant's ``language`` slot conditions."""
    conditions = variant.get("condition") or []
    return [str(c.get("value")) for c in conditions if c.get("name") == "language"]


def source_variants(
    responses: Mapping[str, list[dict[str, Any]]], source: str, default: str
) -> dict[str, list[dict[str, Any]]]:
    """Each response's variants in ``source``: unconditioned ones for the default
    language, those conditioned on ``language: <source>`` otherwise."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, variants in responses.items():
        chosen = []
        for v in variants:
            langs = variant_languages(v)
            if (source in langs) or (not langs and source == default):
                chosen.append(v)
        if chosen:
            out[name] = chosen
    return out


def translations_path(bot_dir: Path, language: str) -> Path:
    return bot_dir / TRANSLATIONS_DIR / f"{language}.yml"


def read_translations(path: Path) -> dict[str, Any]:
    """A translations file (``{}`` when it does not exist); ValueError when malformed."""
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("responses") or {}, dict):
        raise ValueError(f"{path}: expected a mapping with 'responses:'")
    for name, variants in (raw.get("responses") or {}).items():
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            raise ValueError(f"{path}: responses.{name} must be a list of variants")
    return raw


def load_all(bot_dir: Path) -> dict[str, dict[str, Any]]:
    """Every translations file of the bot, by language (blocking: run it in a thread)."""
    folder = bot_dir / TRANSLATIONS_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: read_translations(p) for p in sorted(folder.glob("*.yml"))}


def write_translations(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Machine translations for review (habla translate). Check each variant, fix it,\n"
        "# then delete its `machine: true` line (or set `reviewed: true`). Payloads,\n"
        "# {placeholders} and links must stay as they are. `habla validate` lists what is\n"
        "# still unreviewed or stale (its source text changed).\n"
    )
    body = yaml.safe_dump(dict(document), allow_unicode=True, sort_keys=False, width=100)
    tmp = path.with_suffix(".yml.part")
    tmp.write_text(header + body, encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class Reviewed:
    """A reviewed translation of one source variant, matched against sent replies."""

    pattern: re.Pattern[str]  # the source text, its {placeholders} as named groups
    names: tuple[str, ...]  # group name → placeholder name, by position
    text: str
    titles: Mapping[str, str]  # button payload → translated title
    channel: str

    def render(self, match: re.Match[str]) -> str:
        values = {name: match.group(f"p{i}") for i, name in enumerate(self.names)}
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group()), self.text)


def _pattern(text: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    parts = _PLACEHOLDER.split(text)
    regex, names = "(?s)", list[str]()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex += re.escape(part)
        else:
            regex += f"(?P<p{len(names)}>.+?)"
            names.append(part)
    return re.compile(regex), tuple(names)


class ReviewedTranslations:
    """The reviewed, current variants of every translations file, by language."""

    def __init__(
        self,
        responses: Mapping[str, list[dict[str, Any]]],
        files: Mapping[str, Mapping[str, Any]],
        default: str,
    ) -> None:
        self.by_language: dict[str, list[Reviewed]] = {}
        for language, document in files.items():
            source = str(document.get("source") or default)
            if source != default:  # replies reach LocalizeReplies in the default language
                continue
            originals = {
                source_hash(v): v
                for variants in source_variants(responses, source, default).values()
                for v in variants
            }
            found = []
            for variants in (document.get("responses") or {}).values():
                for v in variants:
                    original = originals.get(str(v.get("source_hash") or ""))
                    if original is None or not is_reviewed(v) or not v.get("text"):
                        continue
                    pattern, names = _pattern(str(original.get("text") or ""))
                    titles = {
                        str(b.get("payload")): str(b.get("title"))
                        for b in v.get("buttons") or []
                        if b.get("payload") is not None
                    }
                    channel = str(v.get("channel") or "")
                    found.append(Reviewed(pattern, names, str(v["text"]), titles, channel))
            if found:  # the longest source first: "A. B" before "A"
                found.sort(key=lambda r: -len(r.pattern.pattern))
                self.by_language[language] = found

    @property
    def languages(self) -> set[str]:
        return set(self.by_language)

    def find(self, text: str, language: str, channel: str = "") -> tuple[Reviewed, str] | None:
        """The reviewed translation of a sent reply, with its placeholders filled in."""
        best = None
        for reviewed in self.by_language.get(language, ()):
            match = reviewed.pattern.fullmatch(text)
            if match is None:
                continue
            if reviewed.channel == channel:
                return reviewed, reviewed.render(match)
            if best is None and not reviewed.channel:
                best = reviewed, reviewed.render(match)
        return best
