"""Multilingual NLU: native training data vs translating to English first.

    python -m bench.nlu_languages

Held-out examples (``bench/data/nlu_heldout.yml``, not in the training data) in
English, Spanish and Portuguese, each Spanish and Portuguese one with a human English
translation. For each language it reports intent accuracy of

* ``native``: the example bot's model (trained on en + es + pt) on the original text;
* ``via English``: the same model on the English translation, i.e. the path habla takes
  for a language without training data, with a perfect translator (an upper bound for
  machine translation).

Not a test; prints a Markdown table.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml

from nlu.training import ensure_model

PROJECT = Path(__file__).resolve().parent.parent
HELDOUT = PROJECT / "bench" / "data" / "nlu_heldout.yml"


def examples() -> dict[str, list[tuple[str, str, str | None]]]:
    """language → [(intent, text, English translation or None)]."""
    data = yaml.safe_load(HELDOUT.read_text(encoding="utf-8"))
    out: dict[str, list[tuple[str, str, str | None]]] = {}
    for lang, intents in data.items():
        english = intents.get("en_translation") or {}
        rows: list[tuple[str, str, str | None]] = []
        for intent, texts in intents.items():
            if intent == "en_translation":
                continue
            translations = english.get(intent) or []
            for i, text in enumerate(texts):
                rows.append((intent, text, translations[i] if i < len(translations) else None))
        out[lang] = rows
    return out


async def main() -> None:
    import logging

    from rasa.core.agent import Agent
    from rasa.utils.log_utils import configure_structlog

    configure_structlog(logging.WARNING)

    model = ensure_model(PROJECT, PROJECT / ".habla" / "models")
    agent = Agent.load(str(model))

    async def intent(text: str) -> Any:
        return (await agent.parse_message(text))["intent"]["name"]

    print("| language | examples | native | via English (human translation) |")
    print("|---|---|---|---|")
    for lang, rows in examples().items():
        native = sum([await intent(t) == i for i, t, _ in rows])
        translated = [(i, e) for i, _, e in rows if e]
        via = sum([await intent(e) == i for i, e in translated])
        via_cell = f"{100 * via / len(translated):.1f} %" if translated else "—"
        print(f"| {lang} | {len(rows)} | {100 * native / len(rows):.1f} % | {via_cell} |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    asyncio.run(main())
