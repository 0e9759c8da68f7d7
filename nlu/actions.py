"""rasa_sdk actions run in this process, behind Rasa's action-endpoint interface.

Rasa calls custom actions with ``action_endpoint.request(json=...)``. This endpoint
answers that call with rasa_sdk's own ``ActionExecutor`` instead of an HTTP round
trip, and maps exceptions the way rasa_sdk's server does (a rejection is a 400 that
Rasa turns into ``ActionExecutionRejection``). An action that raises is logged with
its traceback and answers with the configured error response (by default
``utter_default``), so the user hears the bot's fallback and the conversation goes on.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Optional

from rasa.utils.endpoints import ClientResponseError, EndpointConfig
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import ActionExecutionRejection, ActionNotFoundException

from runtime.messages import mask_phone

logger = logging.getLogger(__name__)


class InProcessActionEndpoint(EndpointConfig):
    def __init__(
        self,
        package: str,
        error_response: str = "utter_default",
        dependencies: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(url=f"inprocess://{package}")
        importlib.import_module(package)  # a broken actions package fails start-up clearly
        self.executor = ActionExecutor()
        self.executor.register_package(package)
        self.error_response = error_response
        inject(self.executor, dependencies or {})

    async def request(
        self,
        method: str = "post",
        subpath: Optional[str] = None,
        content_type: Optional[str] = "application/json",
        compress: bool = False,
        **kwargs: Any,
    ) -> Optional[Any]:
        action_call = kwargs["json"]
        name = action_call.get("next_action", "")
        try:
            return await self.executor.run(action_call)
        except ActionExecutionRejection as e:
            body = {"error": e.message, "action_name": e.action_name}
            raise ClientResponseError(400, "action rejected", json.dumps(body)) from e
        except ActionNotFoundException as e:
            raise ClientResponseError(404, "action not found", str(e)) from e
        except Exception:
            logger.exception(
                "custom action '%s' raised for conversation %s",
                name,
                mask_phone(action_call.get("sender_id", "")),
            )
            responses = [{"response": self.error_response}] if self.error_response else []
            return {"events": [], "responses": responses}


class CopyOnReadEvents(list):
    """A custom action's ``tracker.events``: the dicts habla serialized once
    (nlu/history.py ``serialized_events``), handed out as copies when Python code reads
    them, so an action that edits one edits its own. Reading a few of the latest
    (``slots_to_validate`` in every form validation) costs a few copies, not one per
    event of a long conversation."""

    def __iter__(self) -> Any:
        return (dict(e) for e in super().__iter__())

    def __reversed__(self) -> Any:
        return (dict(e) for e in super().__reversed__())

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if isinstance(index, slice):
            return [dict(e) for e in item]
        return dict(item)


def inject(executor: ActionExecutor, dependencies: Mapping[str, object]) -> None:
    """Hand each registered action the services it declares as class attributes
    (``commerce: Commerce | None = None``); nothing global is looked up."""
    for run in executor.actions.values():
        action = getattr(run, "__self__", None)
        if action is None:
            continue
        for name, value in dependencies.items():
            if hasattr(type(action), name):
                setattr(action, name, value)
