"""Rasa's NLU result, cached per text: repeated messages skip the pipeline.

Chat traffic repeats itself: "hi", "1", "ok", "thanks", button payloads. Rasa's NLU
pipeline maps a text to the same intent and entities whoever sends it, so its result
is kept in a small LRU and copied out on a hit. The dialogue policies still run every
turn (they depend on the conversation).

The key is the text plus what the system entities read from the message's metadata
(nlu/system_entities.py): the turn's language and the sender's country calling code
(national phone numbers, the time zone) and an explicit time zone. The language also
decides what a remote NLU provider (nlu/remote) is asked. A result with a ``time``
entity is never kept ("tomorrow" means another day tomorrow), nor one a remote
provider could not give (a timeout, an outage), so the next message asks it again.
The parse may run in worker threads (nlu/engine.py, with a remote provider): the LRU
is guarded by a lock.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any

import phonenumbers

from nlu.remote import FAILURES, OUTPUT_KEY


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


def _keep(result: dict[str, Any]) -> bool:
    """Whether a parse may be served again to another message with the same key."""
    if any(e.get("entity") == "time" for e in result.get("entities") or []):
        return False
    return (result.get(OUTPUT_KEY) or {}).get("reason") not in FAILURES


def install_parse_cache(processor: Any, size: int) -> None:
    """Wrap ``MessageProcessor._parse_message_with_graph`` with an LRU of ``size`` texts."""
    if size <= 0:
        return
    original = processor._parse_message_with_graph
    cache: OrderedDict[tuple[str, tuple[str, int, str]], dict[str, Any]] = OrderedDict()
    lock = threading.Lock()

    def parse(message: Any, tracker: Any, only_output_properties: bool = True) -> Any:
        if not only_output_properties or not isinstance(message.text, str):
            return original(message, tracker, only_output_properties)
        key = (message.text, context_key(getattr(message, "metadata", None)))
        with lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                return copy.deepcopy(hit)
        result = original(message, tracker, only_output_properties)
        if not _keep(result):
            return result
        with lock:
            cache[key] = copy.deepcopy(result)
            if len(cache) > size:
                cache.popitem(last=False)
        return result

    processor._parse_message_with_graph = parse
