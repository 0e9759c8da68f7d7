"""The Rasa engine seam: parse cache, action-response validation, worker processes."""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from jsonschema import ValidationError
from rasa.core.actions.action import RemoteAction

from habla.wiring import worker_engine
from nlu import engine as engine_module
from nlu.engine import WARM_UP_TEXT, RasaEngine, frozen_after, warm_up
from nlu.parse_cache import install_parse_cache
from nlu.pool import WorkerPoolEngine
from runtime import metrics
from runtime.messages import InboundMessage
from runtime.settings import load_settings
from tests.conftest import base_env


class _Msg:
    def __init__(self, text: str) -> None:
        self.text = text


def test_parse_cache_parses_a_text_once_and_hands_out_copies() -> None:
    calls: list[str] = []

    class Processor:
        def _parse_message_with_graph(self, message: Any, tracker: Any, only: bool = True) -> Any:
            calls.append(message.text)
            return {"text": message.text, "intent": {"name": "greet"}, "entities": []}

    p = Processor()
    install_parse_cache(p, size=2)
    first = p._parse_message_with_graph(_Msg("hi"), None)
    first["entities"].append("mutated by a caller")
    second = p._parse_message_with_graph(_Msg("hi"), None)
    assert second == {"text": "hi", "intent": {"name": "greet"}, "entities": []}
    assert calls == ["hi"]
    p._parse_message_with_graph(_Msg("a"), None)
    p._parse_message_with_graph(_Msg("b"), None)  # evicts "hi" (LRU of 2)
    p._parse_message_with_graph(_Msg("hi"), None)
    assert calls == ["hi", "a", "b", "hi"]
    p._parse_message_with_graph(_Msg("hi"), None, False)  # full output is never cached
    assert calls[-1] == "hi" and len(calls) == 5


def test_the_warm_up_parses_one_made_up_message_and_never_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warm-up (run after a load, on the warm-up thread) parses WARM_UP_TEXT once
    with an empty tracker, through the method bound before any parse cache; a parse
    that raises is logged and the future still succeeds (the turn goes on)."""
    parsed: list[tuple[str, int]] = []

    class Processor:
        fail = False

        def _parse_message_with_graph(self, message: Any, tracker: Any, only: bool = True) -> Any:
            parsed.append((message.text, len(tracker.events)))
            if self.fail:
                raise RuntimeError("the model is broken")
            return {}

    processor = Processor()
    with ThreadPoolExecutor(1) as warm_ups:
        assert warm_up(processor, warm_ups).result() is None
        install_parse_cache(processor, size=8)  # (bound before: the cache never sees it)
        processor.fail = True
        assert warm_up(processor, warm_ups).result() is None
    assert parsed == [(WARM_UP_TEXT, 0), (WARM_UP_TEXT, 0)]
    assert "the warm-up parse failed" in caplog.text


async def test_the_first_turn_waits_for_the_warm_up(engine: RasaEngine) -> None:
    """A turn that arrives while the warm-up runs starts once it has ended."""
    warming: Future[None] = Future()
    seen: list[bool] = []
    processor = engine.agent.processor
    original = processor.handle_message

    async def handle_message(message: Any) -> None:  # (the dialogue is not the point)
        seen.append(warming.done())

    engine._warming = warming
    processor.handle_message = handle_message
    try:
        turn = asyncio.create_task(engine.handle(InboundMessage("rest", "warm-1", text="hi")))
        await asyncio.sleep(0)  # (one step of the turn: it now waits on the warm-up)
        assert not turn.done() and seen == []
        warming.set_result(None)
        assert await turn == [] and seen == [True] and engine._warming is None
    finally:
        processor.handle_message = original
        engine._warming = None


class _Node:
    other: _Node


def _garbage_cycle() -> weakref.ref[_Node]:
    """Two objects that only reference each other (only the cyclic collector frees
    them); a weak reference says whether they still exist."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_first_load_freezes_its_imports_and_a_reload_collects_the_old_cycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process's first load freezes what exists once its imports are done (their
    garbage stays, the final collection is short); what the model load leaves is
    collected. A later load unfreezes first: the earlier garbage goes then."""
    monkeypatch.setattr(engine_module, "_loads", 0)
    with frozen_after() as imported:
        from_imports = _garbage_cycle()
        imported()
        from_the_model = _garbage_cycle()
    assert from_imports() is not None and from_the_model() is None
    assert engine_module._loads == 1
    with frozen_after() as imported:
        imported()  # (not the first load: nothing frozen here)
    assert from_imports() is None


async def test_action_responses_are_still_validated(engine: RasaEngine) -> None:
    action = RemoteAction("action_x", None)
    assert action._validate_action_result({"events": [], "responses": []})
    with pytest.raises(ValidationError, match="Failed to validate Action server response"):
        action._validate_action_result({"events": [{"no_event_key": 1}]})


async def test_worker_processes_run_turns_and_keep_each_conversation_on_one(
    model_path: Path, tmp_path: Path
) -> None:
    env = base_env(tmp_path / "data") | {"HABLA_MODEL": str(model_path)}
    settings = load_settings(env=env)
    # the workers write their metrics to this process's folder (multi-process mode)
    metrics.use_directory(metrics.server_directory(settings.data_dir), clean=True)
    before = await handled_in_workers()
    pool = WorkerPoolEngine(model_path, settings, 2, worker_engine)
    await pool.load()
    try:
        pids = {w.process.pid for w in pool.workers}
        assert len(pids) == 2
        say = lambda conv, text: pool.handle(  # noqa: E731
            InboundMessage(channel="rest", conversation_id=conv, text=text)
        )
        assert "order number" in (await say("a", "where is my order?"))[0].text.lower()
        assert "Monday" in (await say("b", "opening hours"))[0].text
        assert "shipped" in (await say("a", "AB12345"))[0].text.lower()
        assert pool._worker("a") is pool._worker("a")

        # a worker that dies is restarted on the next message; state is in the store
        victim = pool._worker("a")
        victim.process.kill()
        victim.process.join(10)
        replies = await say("a", "when are you open?")
        assert "Monday" in replies[0].text
        assert victim.process.pid not in pids
        # every worker's turns are added up, the killed one's too
        assert await handled_in_workers() - before == 4
    finally:
        await pool.close()
    assert all(not w.process.is_alive() for w in pool.workers)


async def handled_in_workers() -> float:
    """``habla_engine_handle_duration_seconds_count``, summed over the workers."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await metrics.exposition()).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "habla_engine_handle_duration_seconds_count"
    )
