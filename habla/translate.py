"""``habla translate --to fr``: machine translations of every response, for review.

The configured translator (``HABLA_TRANSLATOR``, built by habla/wiring.py) translates
each source-language variant's text and button titles (its base protects
``{placeholders}``, links, numbers and codes; payloads are never sent) into
``translations/<lang>.yml`` (format: i18n/reviewed.py). Running it again keeps
reviewed translations whose source is unchanged and translates the rest again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habla import wiring
from i18n import reviewed as files
from runtime.settings import Settings, SettingsError

KEPT_KEYS = ("channel", "custom", "image", "attachment")


@dataclass
class Outcome:
    path: Path
    translated: int
    kept: int  # reviewed variants whose source did not change


async def translate_responses(settings: Settings, target: str, source: str = "") -> Outcome:
    """Write ``translations/<target>.yml`` for the bot in ``settings.bot.dir``."""
    translator = wiring.build_translator(settings)
    if translator is None:
        raise SettingsError(["i18n.translator (HABLA_TRANSLATOR): set one to translate"])
    bot_dir = settings.path(settings.bot.dir)
    default = settings.languages[0]
    source = source or default
    responses = await asyncio.to_thread(wiring.domain_responses, bot_dir)
    path = files.translations_path(bot_dir, target)
    old = await asyncio.to_thread(files.read_translations, path)
    kept: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name, variants in (old.get("responses") or {}).items():
        for v in variants:
            if files.is_reviewed(v):
                kept[(name, str(v.get("source_hash")), str(v.get("channel") or ""))] = v
    todo: list[tuple[str, dict[str, Any]]] = []
    out: dict[str, list[dict[str, Any]]] = {}
    for name, variants in files.source_variants(responses, source, default).items():
        for v in variants:
            if not v.get("text"):
                continue
            key = (name, files.source_hash(v), str(v.get("channel") or ""))
            out.setdefault(name, []).append(kept.get(key) or {})
            if key not in kept:
                todo.append((name, v))
    texts: list[str] = []
    for _, v in todo:
        texts.append(str(v["text"]))
        texts += [str(b.get("title") or "") for b in v.get("buttons") or []]
    await translator.start()
    try:
        done = iter(await translator.translate(texts, source, target) if texts else [])
    finally:
        await translator.close()
    slots = {name: [i for i, v in enumerate(vs) if not v] for name, vs in out.items()}
    for name, v in todo:
        translated: dict[str, Any] = {"text": next(done)}
        buttons = [
            {"title": next(done), "payload": b.get("payload")} for b in v.get("buttons") or []
        ]
        if buttons:
            translated["buttons"] = buttons
        translated |= {k: v[k] for k in KEPT_KEYS if v.get(k)}
        translated |= {"source_hash": files.source_hash(v), "machine": True}
        out[name][slots[name].pop(0)] = translated
    document = {"language": target, "source": source, "responses": out}
    await asyncio.to_thread(files.write_translations, path, document)
    return Outcome(path, len(todo), sum(len(vs) for vs in out.values()) - len(todo))
