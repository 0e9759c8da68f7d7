"""Repeated messages are parsed once.

Chat traffic repeats itself: "hi", "1", "ok", "thanks", button payloads. Rasa's NLU
pipeline maps a text to the same intent and entities whoever sends it, so its result
is kept in a small LRU keyed by the text and copied out on a hit. The dialogue policies
still run every turn (they depend on the conversation).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any


def install_parse_cache(processor: Any, size: int) -> None:
    """Wrap ``MessageProcessor._parse_message_with_graph`` with an LRU of ``size`` texts."""
    if size <= 0:
        return
    original = processor._parse_message_with_graph
    cache: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def parse(message: Any, tracker: Any, only_output_properties: bool = True) -> Any:
        if not only_output_properties or not isinstance(message.text, str):
            return original(message, tracker, only_output_properties)
        hit = cache.get(message.text)
        if hit is not None:
            cache.move_to_end(message.text)
            return copy.deepcopy(hit)
        result = original(message, tracker, only_output_properties)
        cache[message.text] = copy.deepcopy(result)
        if len(cache) > size:
            cache.popitem(last=False)
        return result

    processor._parse_message_with_graph = parse
    processor._habla_parse_cache = cache
