"""Rasa's response templates, without treating a button's JSON payload as a template.

Rasa's ``TemplatedNaturalLanguageGenerator`` fills ``{slot}`` placeholders in every
string of a response, button payloads included. A payload that carries entities the
way Rasa documents them, ``/buy{"product":"mug"}``, is not a template: the
interpolator reads ``{"product":"mug"}`` as a slot named ``"product":"mug"``, logs an
ERROR with a traceback for every such button on every turn, and returns the payload
unchanged. :class:`ButtonPayloadGenerator` fills the rest of the response as Rasa
does, and fills a payload's JSON entities value by value (so
``/buy{"product":"{product}"}`` still takes the slot's value); a payload that is not
``/intent{JSON}`` is filled as Rasa fills it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rasa.core.nlg import interpolator
from rasa.core.nlg.response import TemplatedNaturalLanguageGenerator

_INTENT_WITH_ENTITIES = re.compile(r"^(/[^{]*)(\{.*\})$", re.S)


def fill_payload(payload: str, values: dict[str, Any]) -> str:
    """A button payload with its placeholders filled; its JSON part kept as JSON."""
    m = _INTENT_WITH_ENTITIES.match(payload)
    if m is None:
        return str(interpolator.interpolate_text(payload, values))
    try:
        entities = json.loads(m.group(2))
    except ValueError:  # not JSON: a template, e.g. /choose_{slot}
        return str(interpolator.interpolate_text(payload, values))
    filled = _fill_values(entities, values)
    if filled == entities:
        return payload  # exactly as the author wrote it
    return m.group(1) + json.dumps(filled, ensure_ascii=False, separators=(",", ":"))


def _fill_values(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return interpolator.interpolate_text(value, values) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill_values(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_values(v, values) for v in value]
    return value


class ButtonPayloadGenerator(TemplatedNaturalLanguageGenerator):
    """Rasa's templated generator; button payloads filled by :func:`fill_payload`."""

    def _fill_response(
        self,
        response: dict[str, Any],
        filled_slots: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        buttons = response.get("buttons")
        payloads: dict[int, str] = {}
        if isinstance(buttons, list):
            for index, button in enumerate(buttons):
                if isinstance(button, dict) and isinstance(button.get("payload"), str):
                    payloads[index] = button.pop("payload")
        response = super()._fill_response(response, filled_slots, **kwargs)
        if payloads:
            variables = self._response_variables(filled_slots or {}, kwargs)
            filled = response["buttons"]
            for index, payload in payloads.items():
                filled[index]["payload"] = (
                    fill_payload(payload, variables) if variables else payload
                )
        return response


def install(agent: Any) -> None:
    """Use :class:`ButtonPayloadGenerator` where the agent uses Rasa's templated one
    (a custom NLG endpoint is left alone)."""
    nlg = agent.nlg
    if type(nlg) is TemplatedNaturalLanguageGenerator:
        generator = ButtonPayloadGenerator(nlg.responses)
        agent.nlg = generator
        if agent.processor is not None:
            agent.processor.nlg = generator
