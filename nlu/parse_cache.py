"""Repeated messages are parsed once.

Chat traffic repeats itself: "hi", "1", "ok", "thanks", button payloads. Rasa's NLU
pipeline maps a text to the same intent and entities whoever sends it, so its result
is kept in a small LRU and copied out on a hit. The dialogue policies still run every
turn (they depend on the conversation).

The key is the text plus what the system entities read from the message's metadata
(nlu/system_entities.py): the turn's language and the sender's country calling code
(national phone numbers, the time zone) and an explicit time zone. A result with a
``time`` entity is never kept: "tomorrow" means another day tomorrow.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import phonenumbers


def context_key(metadata: Any) -> tuple[str, int, str]:
    """What, besides the text, changes a parse: (language, calling code, time zone)."""
    if not isinstance(metadata, dict):
        return "", 0, ""
    language = metadata.get("language")
    if isinstance(language, dict):
        language = language.get("code")
    code = 0
    phone = str(metadata.get("phone") or "").split(":")[-1]
    if phone.startswith("+"):
        try:
            code = phonenumbers.parse(phone, None).country_code or 0
        except phonenumbers.NumberParseException:
            code = 0
    return str(language or ""), code, str(metadata.get("timezone") or "")


def install_parse_cache(processor: Any, size: int) -> None:
    """Wrap ``MessageProcessor._parse_message_with_graph`` with an LRU of ``size`` texts."""
    if size <= 0:
        return
    original = processor._parse_message_with_graph
    cache: OrderedDict[tuple[str, tuple[str, int, str]], dict[str, Any]] = OrderedDict()

    def parse(message: Any, tracker: Any, only_output_properties: bool = True) -> Any:
        if not only_output_properties or not isinstance(message.text, str):
            return original(message, tracker, only_output_properties)
        key = (message.text, context_key(getattr(message, "metadata", None)))
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return copy.deepcopy(hit)
        result = original(message, tracker, only_output_properties)
        if any(e.get("entity") == "time" for e in result.get("entities") or []):
            return result
        cache[key] = copy.deepcopy(result)
        if len(cache) > size:
            cache.popitem(last=False)
        return result

    processor._parse_message_with_graph = parse
    processor._habla_parse_cache = cache
