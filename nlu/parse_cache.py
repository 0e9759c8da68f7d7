"""Repeated messages are parsed once.

Chat traffic repeats itself: "hi", "1", "ok", "thanks", button payloads. Rasa's NLU
pipeline maps a text to the same intent and entities whoever sends it, so its result
is kept in a small LRU keyed by the text and copied out on a hit. The dialogue policies
still run every turn (they depend on the conversation).

A model with a remote NLU provider (nlu/remote) also depends on the message's language
(the provider is asked in it): the key is then the text and the language, and a result
the provider could not give (a timeout, an outage) is not kept, so the next message
asks it again. The parse may run in worker threads then (nlu/engine.py): the LRU is
guarded by a lock.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from nlu.remote import FAILURES, OUTPUT_KEY


def _language(message: Any) -> str:
    metadata = getattr(message, "metadata", None) or {}
    language = metadata.get("language") if isinstance(metadata, dict) else None
    code = language.get("code") if isinstance(language, dict) else language
    return str(code or "")


def install_parse_cache(processor: Any, size: int, by_language: bool = False) -> None:
    """Wrap ``MessageProcessor._parse_message_with_graph`` with an LRU of ``size`` texts
    (``by_language``: of texts in each language, for remote NLU)."""
    if size <= 0:
        return
    original = processor._parse_message_with_graph
    cache: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
    lock = threading.Lock()

    def parse(message: Any, tracker: Any, only_output_properties: bool = True) -> Any:
        if not only_output_properties or not isinstance(message.text, str):
            return original(message, tracker, only_output_properties)
        key: Hashable = (message.text, _language(message)) if by_language else message.text
        with lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                return copy.deepcopy(hit)
        result = original(message, tracker, only_output_properties)
        if (result.get(OUTPUT_KEY) or {}).get("reason") in FAILURES:
            return result
        with lock:
            cache[key] = copy.deepcopy(result)
            if len(cache) > size:
                cache.popitem(last=False)
        return result

    processor._parse_message_with_graph = parse
    processor._habla_parse_cache = cache
