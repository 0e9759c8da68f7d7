"""Rasa 3.6 hot spots fixed without changing behaviour.

``RemoteAction._validate_action_result`` calls ``jsonschema.validate`` on every custom
action response, which re-checks the (fixed) response schema each time: about 40 ms
of CPU per action call on this kind of machine, more than the rest of the turn. Here the
schema is checked once and a compiled validator is reused; responses are validated
exactly as before, with the same error message.

``DaskGraphRunner.run`` runs the model's graph through ``dask.get`` for every NLU parse
and every action prediction (two or three per turn): each call prunes the schema,
builds a dask graph, orders it (``dask.order``) and schedules it, about a sixth of an
engine worker's CPU on the example bot, to call the same few nodes one after the other
in one thread. :func:`run_graph` calls them in the order it worked out once for those
targets and inputs, with the arguments dask would pass: each node's ``(name, output)``
from the nodes and inputs it needs, the bare name for one nothing provides.

Before every message the processor asks ``Domain.is_empty``, which serializes the
whole domain and a new empty one to compare them; a domain's emptiness is known once
(the model's domain is not edited while served), so it is kept on the domain.

Rasa's processor, forms, MemoizationPolicy and RulePolicy deep-copy what they hand to
their structured DEBUG logs (parse data, events, every prediction's states) on every
call, also when DEBUG is off and the log drops them unread: a twentieth of a turn. In
those four modules ``copy`` serves only that, so there it is :data:`LOG_COPY`, which
deep-copies only while Rasa's structured logger processes DEBUG events.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

_originals: dict[str, Any] = {}
_patched: dict[str, Any] = {}
LOGGING_MODULES = (
    "rasa.core.processor",
    "rasa.core.actions.forms",
    "rasa.core.policies.memoization",
    "rasa.core.policies.rule_policy",
)
"""Rasa modules whose ``copy`` module only deep-copies arguments of ``structlogger.debug``."""


class _LogCopy:
    """The ``copy`` module, but ``deepcopy`` copies only while Rasa's structlog
    configuration processes DEBUG events (``rasa.utils.log_utils.configure_structlog``
    makes ``debug`` a no-op below its level)."""

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        import structlog

        wrapper = structlog.get_config().get("wrapper_class")
        if getattr(getattr(wrapper, "debug", None), "__name__", "") == "_nop":
            return value
        return copy.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


LOG_COPY = _LogCopy()


def install() -> None:
    """Switch them on (process-wide: Rasa's classes and modules)."""
    if not _originals:
        for key, (owner, attr) in _targets().items():
            _originals[key] = getattr(owner, attr)
        _patched.update(validate=_compiled_validation(), run=run_graph, is_empty=domain_is_empty)
    _switch(_patched, LOG_COPY)


def uninstall() -> None:
    """Rasa's own code again (the tests compare the two)."""
    if _originals:
        _switch(_originals, copy)


def _targets() -> dict[str, tuple[Any, str]]:
    from rasa.core.actions.action import RemoteAction
    from rasa.engine.runner.dask import DaskGraphRunner
    from rasa.shared.core.domain import Domain

    return {
        "validate": (RemoteAction, "_validate_action_result"),
        "run": (DaskGraphRunner, "run"),
        "is_empty": (Domain, "is_empty"),
    }


def _switch(functions: dict[str, Any], copy_module: Any) -> None:
    for key, (owner, attr) in _targets().items():
        setattr(owner, attr, functions[key])
    for name in LOGGING_MODULES:
        importlib.import_module(name).copy = copy_module  # type: ignore[attr-defined]


def installed() -> bool:
    from rasa.engine.runner.dask import DaskGraphRunner

    return bool(_patched) and DaskGraphRunner.run is _patched["run"]


def _compiled_validation() -> Any:
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

    return validate_action_result


EMPTY_ATTR = "_habla_is_empty"


def domain_is_empty(self: Any) -> bool:
    """``Domain.is_empty``, computed once per domain."""
    known = self.__dict__.get(EMPTY_ATTR)
    if known is None:
        known = self.__dict__[EMPTY_ATTR] = bool(_originals["is_empty"](self))
    return bool(known)


PLANS_ATTR = "_habla_plans"


def run_graph(
    self: Any, inputs: dict[str, Any] | None = None, targets: list[str] | None = None
) -> dict[str, Any]:
    """``DaskGraphRunner.run`` without dask: the same nodes, once each, in an order
    the node's needs allow, the same errors (a ``RuntimeError`` becomes Rasa's
    ``GraphRunError``, as there)."""
    from rasa.engine.exceptions import GraphRunError

    run_targets = targets if targets else self._graph_schema.target_names
    inputs = inputs or {}
    plans: dict[Any, Any] = self.__dict__.setdefault(PLANS_ATTR, {})
    key = (tuple(run_targets), tuple(inputs))
    try:
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _plan(self, run_targets, inputs)
        nodes, steps = plan
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            if isinstance(value, str) and (value in nodes or value in values):
                raise GraphRunError(
                    f"Input value '{value}' clashes with a node name. Make sure "
                    f"that none of the input names passed to the `run` method are the "
                    f"same as node names in the graph schema."
                )
            values[name] = (name, value)
        for name, node, needs in steps:
            values[name] = node(*(values.get(need, need) for need in needs))
        return dict(values[target] for target in run_targets)
    except RuntimeError as e:
        raise GraphRunError("Error running runner.") from e


def _plan(self: Any, targets: list[str], inputs: dict[str, Any]) -> tuple[Any, ...]:
    """The node names of the pruned schema and the steps that run it: ``(name, node,
    names it needs)`` after what they need. As in dask's graph, inputs replace the nodes
    of the same name, and every node of the pruned schema runs (dask runs a whole
    graph), even one that only fed a node an input replaced."""
    schema = self._graph_schema.minimal_graph_schema(targets)
    steps: list[tuple[str, Any, tuple[str, ...]]] = []
    done: set[str] = set(inputs)

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name not in schema.nodes:
            return
        if name in path:
            raise RuntimeError(f"the graph has a cycle through {name!r}")
        needs = tuple(schema.nodes[name].needs.values())
        for need in needs:
            visit(need, (*path, name))
        done.add(name)
        steps.append((name, self._instantiated_nodes[name], needs))

    for name in (*targets, *schema.nodes):
        visit(name, ())
    return frozenset(schema.nodes), steps
