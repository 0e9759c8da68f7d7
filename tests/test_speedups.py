"""nlu/speedups.py against what it replaces in Rasa 3.6.

Rasa's graph run without dask (``run_graph``) against ``dask.get``: the runner only
reads the schema (what each node needs) and calls the instantiated nodes, so stand-in
nodes that record their calls show what each runner does: which nodes run, how often,
with which arguments, what comes back and which errors. The debug-only deep copies and
the domain's emptiness kept once, against Rasa's own. (tests/test_history.py runs a
2,000-event conversation with all of them and with Rasa's own code.)"""

from __future__ import annotations

from typing import Any

import pytest
from rasa.engine.exceptions import GraphRunError
from rasa.engine.graph import GraphSchema, SchemaNode
from rasa.engine.runner.dask import DaskGraphRunner
from rasa.shared.core.domain import Domain

from nlu import speedups


class Node:
    """A ``GraphNode`` stand-in: ``(name, output)`` from the ``(name, value)`` pairs or
    bare names it is called with."""

    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...]]], fail: bool) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def __call__(self, *inputs: Any) -> tuple[str, Any]:
        self.calls.append((self.name, inputs))
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return self.name, (self.name, [i[1] if isinstance(i, tuple) else i for i in inputs])


def runner(needs: dict[str, dict[str, str]], fail: str = "") -> tuple[Any, list[Any]]:
    schema = GraphSchema(
        {
            name: SchemaNode(needs=n, uses=Node, constructor_name="", fn="", config={})
            for name, n in needs.items()
        }
    )
    calls: list[tuple[str, tuple[Any, ...]]] = []
    graph = object.__new__(DaskGraphRunner)
    graph._graph_schema = schema
    graph._execution_context = None  # (dask's run logs it)
    graph._instantiated_nodes = {name: Node(name, calls, name == fail) for name in needs}
    return graph, calls


GRAPH = {
    "tokens": {"messages": "__message__"},
    "features": {"messages": "tokens"},
    "intent": {"messages": "features", "extra": "features"},
    "entities": {"messages": "tokens", "hint": "nowhere"},  # nothing provides "nowhere"
    "policy": {"tracker": "__tracker__", "intent": "intent"},
    "ensemble": {"a": "policy", "b": "intent"},
    "unused": {"x": "tokens"},
}


def both(
    targets: list[str] | None, inputs: dict[str, Any] | None, fail: str = ""
) -> list[tuple[Any, Any]]:
    """(result or error, calls) of dask's run and of ``run_graph``, in that order."""
    out = []
    for run in (speedups._originals.get("run", DaskGraphRunner.run), speedups.run_graph):
        graph, calls = runner(GRAPH, fail)
        try:
            result: Any = run(graph, inputs, targets)
        except Exception as e:
            result = (type(e), str(e), type(e.__cause__))
        out.append((result, sorted(calls, key=lambda c: c[0])))
    return out


@pytest.fixture(autouse=True)
def rasa_runner_known() -> None:
    speedups.install()  # (keeps dask's run in speedups._originals)


@pytest.mark.parametrize(
    ("targets", "inputs"),
    [
        (["ensemble"], {"__message__": "hi", "__tracker__": "t"}),
        (["intent", "entities"], {"__message__": "hi"}),
        (["ensemble", "intent"], {"__message__": "hi", "__tracker__": "t", "other": 1}),
        (["policy"], {"__tracker__": "t", "intent": "given"}),  # an input replaces a node
        (["tokens"], {}),  # its input is missing: the node gets the bare name
        (None, {"__message__": "hi", "__tracker__": "t"}),  # every target of the schema
    ],
)
def test_the_same_nodes_run_once_with_the_same_arguments_and_results(
    targets: list[str] | None, inputs: dict[str, Any]
) -> None:
    (dask_result, dask_calls), (ours, our_calls) = both(targets, inputs)
    assert ours == dask_result
    assert our_calls == dask_calls
    assert len({c[0] for c in our_calls}) == len(our_calls)  # each node once


def test_a_failing_node_raises_as_with_dask() -> None:
    (dask_error, _), (our_error, _) = both(["ensemble"], {"__message__": "hi"}, fail="features")
    assert our_error == dask_error == (GraphRunError, "Error running runner.", RuntimeError)


def test_an_input_named_like_a_node_is_refused() -> None:
    (dask_error, _), (our_error, _) = both(["intent"], {"__message__": "tokens"})
    assert our_error == dask_error
    assert our_error[0] is GraphRunError and "clashes with a node name" in our_error[1]


def test_the_order_is_worked_out_once_per_targets_and_inputs() -> None:
    graph, calls = runner(GRAPH)
    for _ in range(3):
        speedups.run_graph(graph, {"__message__": "hi", "__tracker__": "t"}, ["ensemble"])
    speedups.run_graph(graph, {"__message__": "hi"}, ["intent"])
    assert len(graph.__dict__[speedups.PLANS_ATTR]) == 2
    assert len(calls) == 3 * 5 + 3


def test_a_domain_s_emptiness_is_computed_once_and_as_rasa_computes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = speedups._originals["is_empty"]
    calls: list[Domain] = []

    def counting(self: Domain) -> bool:
        calls.append(self)
        return bool(original(self))

    monkeypatch.setitem(speedups._originals, "is_empty", counting)
    empty = Domain.empty()
    shop = Domain.load("domain.yml")
    assert [empty.is_empty() for _ in range(3)] == [True] * 3
    assert [shop.is_empty() for _ in range(3)] == [False] * 3
    asked = [id(d) for d in calls]  # (loading a domain asks too)
    assert asked.count(id(empty)) == 1 and asked.count(id(shop)) == 1


def test_debug_copies_are_made_only_while_rasa_logs_debug() -> None:
    import logging

    import rasa.core.processor as processor
    from rasa.utils.log_utils import configure_structlog

    value = {"states": [{"user": {"intent": "greet"}}]}
    assert processor.copy is speedups.LOG_COPY
    try:
        configure_structlog(logging.WARNING)
        assert processor.copy.deepcopy(value) is value
        configure_structlog(logging.DEBUG)
        copied = processor.copy.deepcopy(value)
        assert copied == value and copied is not value
        assert copied["states"][0] is not value["states"][0]
    finally:
        configure_structlog(logging.WARNING)
