"""A long conversation behaves as Rasa's own computation says (nlu/history.py).

The same script runs twice through the real engine: once with the incremental history
work, the prediction caches (nlu/prediction_cache.py: TED's and the rules') and the
graph run without dask (nlu/speedups.py), once with Rasa 3.6's own code
(``history.uninstall()``, ``prediction_cache.uninstall()``, ``speedups.uninstall()``);
every event
(actions with their policy and confidence, slots, loops, reverts, restarts) and every
reply must be the same. The script covers a form with a rejected and an accepted
value, a rule conditioned on the form being active, ``/back`` (reverts), ``/restart``
and ``/session_start``. Then the incremental conversation goes on past 1,000 turns and
a form, a loop rule and a restart still work there.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rasa.core.policies.rule_policy import RulePolicy
from rasa.shared.core.trackers import DialogueStateTracker, EventVerbosity

from nlu import history, prediction_cache, speedups
from nlu.engine import RasaEngine
from nlu.tracker_store import SQLiteTrackerStore
from runtime.messages import InboundMessage
from runtime.sqlite import SQLite

BLOCK = [
    "hi",
    "how much is the mug?",
    "where is my order?",
    "AB12345",
    "thanks",
    "/back",
    "where is my order?",
    "zz",
    "I want to talk to a person",
    "what are your opening hours?",
    "/affirm",
    "do you ship to Spain?",
    "/restart",
    "hello",
    "/session_start",
    "how much is the hoodie",
    "bye",
]
COMPARED_EVENTS = 2_000
LONG_TURNS = 1_000


@pytest.fixture
async def engine(engine: RasaEngine, tmp_path: Path) -> AsyncIterator[RasaEngine]:
    """The shared engine on habla's own store (trackers kept between turns), as served."""
    previous = engine.tracker_store, engine.agent.tracker_store
    db = SQLite(tmp_path / "history.sqlite3")
    store = SQLiteTrackerStore(db, cache_size=16)
    await store.setup()
    engine.bind_tracker_store(store)
    yield engine
    engine.tracker_store = previous[0]
    engine.agent.tracker_store = engine.agent.processor.tracker_store = previous[1]
    await db.close()


def essence(event: Any) -> tuple[Any, ...]:
    """What a turn decided, without timestamps."""
    d = event.as_dict()
    kind = d["event"]
    if kind == "action":
        return (kind, d["name"], d.get("policy"), round(d.get("confidence") or 0.0, 6))
    if kind == "user":
        return (kind, d["text"], d["parse_data"]["intent"].get("name"))
    if kind == "bot":
        return (kind, d["text"])
    if kind == "slot":
        return (kind, d["name"], repr(d["value"]))
    return (kind, repr({k: v for k, v in d.items() if k not in ("timestamp", "metadata")}))


async def say(engine: RasaEngine, conversation: str, text: str) -> list[str]:
    replies = await engine.handle(
        InboundMessage(channel="rest", conversation_id=conversation, text=text)
    )
    return [r.text for r in replies]


async def tracker(engine: RasaEngine, conversation: str) -> DialogueStateTracker:
    found = await engine.tracker_store.retrieve_full_tracker(conversation)
    assert found is not None
    return found


async def length(engine: RasaEngine, conversation: str) -> int:
    """Events of the conversation (every session), from the store's log."""
    row = await engine.tracker_store.db.fetchone(
        "SELECT COUNT(*) FROM events WHERE sender_id = ?", (conversation,)
    )
    return int(row[0])


async def test_a_long_conversation_decides_exactly_as_rasa_does(engine: RasaEngine) -> None:
    assert history.installed() and prediction_cache.installed() and speedups.installed()
    script = itertools.cycle(BLOCK)
    texts: list[str] = []
    flat_replies: list[list[str]] = []
    while True:
        texts.append(next(script))
        flat_replies.append(await say(engine, "history-flat", texts[-1]))
        if await length(engine, "history-flat") >= COMPARED_EVENTS:
            break
    history.uninstall()
    prediction_cache.uninstall()  # Rasa's own TED predictions and rule lookups too
    speedups.uninstall()  # and its dask graph runner
    try:
        rasa_replies = [await say(engine, "history-rasa", text) for text in texts]
    finally:
        history.install()
        prediction_cache.install(engine.prediction_cache)
        speedups.install()
    assert rasa_replies == flat_replies
    flat = [essence(e) for e in (await tracker(engine, "history-flat")).events]
    rasa = [essence(e) for e in (await tracker(engine, "history-rasa")).events]
    assert len(flat) >= COMPARED_EVENTS
    assert flat == rasa
    kinds = {e[0] for e in flat}
    # the script reached what it is meant to cover
    assert {"restart", "session_started", "rewind", "active_loop", "slot"} <= kinds
    assert any(e[:2] == ("action", "utter_handoff") for e in flat)
    assert any(e[:2] == ("action", "action_order_status") for e in flat)


async def test_after_a_thousand_turns_forms_rules_and_restarts_still_work(
    engine: RasaEngine,
) -> None:
    conversation = "history-long"
    for text, _ in zip(itertools.cycle(BLOCK[:13]), range(LONG_TURNS)):
        await say(engine, conversation, text)
    long = await tracker(engine, conversation)
    assert len(long.events) > 5 * LONG_TURNS
    # a form started after turn 1,000 asks, rejects a bad number, accepts a good one
    assert any(
        "order number" in r.lower() for r in await say(engine, conversation, "where is my order?")
    )
    await say(engine, conversation, "zz")
    assert (await tracker(engine, conversation)).active_loop_name == "order_status_form"
    replies = await say(engine, conversation, "AB12345")
    assert any("AB12345" in r for r in replies)
    assert (await tracker(engine, conversation)).active_loop_name is None
    # a rule conditioned on the active form fires
    await say(engine, conversation, "where is my order?")
    handoff = await say(engine, conversation, "I want to talk to a person")
    latest = await tracker(engine, conversation)
    assert latest.active_loop_name is None
    assert "utter_handoff" in [
        e.action_name for e in list(latest.events)[-6:] if e.type_name == "action"
    ]
    assert handoff
    # a restart, then the conversation goes on
    await say(engine, conversation, "/restart")
    assert await say(engine, conversation, "hi")


async def test_copies_and_applied_events_match_rasa(engine: RasaEngine) -> None:
    for text in BLOCK * 3:
        await say(engine, "history-copy", text)
    long = await tracker(engine, "history-copy")
    quick_copy = long.copy()
    quick_applied = long.applied_events()
    history.uninstall()
    try:
        rasa_copy = long.copy()
        rasa_applied = long.applied_events()
    finally:
        history.install()
    assert quick_applied == rasa_applied
    assert quick_copy.current_state(EventVerbosity.ALL) == rasa_copy.current_state(
        EventVerbosity.ALL
    )
    assert quick_copy.active_loop == rasa_copy.active_loop
    assert quick_copy.followup_action == rasa_copy.followup_action


async def test_actions_see_every_event_serialized_as_rasa_does(engine: RasaEngine) -> None:
    from rasa.core.actions.action import RemoteAction
    from rasa_sdk.interfaces import Tracker

    from nlu.actions import InProcessActionEndpoint

    for text in BLOCK * 2:
        await say(engine, "history-actions", text)
    long = await tracker(engine, "history-actions")
    action = RemoteAction("action_product_price", InProcessActionEndpoint("actions"))
    expected = [e.as_dict() for e in long.events]
    seen = Tracker.from_dict(action._action_call_format(long, engine.agent.domain)["tracker"])
    assert list(seen.events) == expected and len(seen.events) == len(expected)
    assert seen.events[-3:] == expected[-3:] and list(reversed(seen.events))[0] == expected[-1]
    for event in seen.events:
        event["event"] = "edited by an action"  # an action's edits stay its own
    seen.events[0]["event"] = "edited"
    again = Tracker.from_dict(action._action_call_format(long, engine.agent.domain)["tracker"])
    assert list(again.events) == expected
    assert again.slots_to_validate() == {}
    remote = RemoteAction("action_product_price", None)  # an action server gets the list
    assert remote._action_call_format(long, engine.agent.domain)["tracker"]["events"] == expected


def counted(function: Any, calls: list[int]) -> Any:
    """``function``, noting each call in ``calls``."""

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return function(*args, **kwargs)

    return counting


async def test_ted_predictions_from_the_cache_are_the_ones_ted_computes(
    engine: RasaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TED prediction of the script, three times over (the states repeat, so most
    come from the cache), equals the one Rasa's TED computes for the same tracker."""
    assert prediction_cache.installed() and engine.prediction_cache > 0
    original, cached = prediction_cache._original, prediction_cache.cached_prediction
    computed: list[int] = []
    counting = counted(original, computed)
    seen: list[tuple[Any, ...]] = []

    def recording(self: Any, tracker: Any, domain: Any, *args: Any, **kwargs: Any) -> Any:
        result = cached(self, tracker, domain, *args, **kwargs)
        seen.append((self, tracker.copy(), domain, args, kwargs, list(result.probabilities)))
        return result

    monkeypatch.setattr(prediction_cache, "_original", counting)
    monkeypatch.setattr(prediction_cache, "cached_prediction", recording)
    for text in BLOCK * 3:
        await say(engine, "ted-cache", text)
    assert len(seen) > 60 and len(computed) < len(seen) / 2  # most came from the cache
    for policy, tracker_copy, domain, args, kwargs, probabilities in seen:
        expected = original(policy, tracker_copy, domain, *args, **kwargs).probabilities
        assert probabilities == pytest.approx(expected, abs=1e-6)


async def test_rules_found_from_the_cache_are_the_ones_rasa_finds(
    engine: RasaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rule lookup of the script, three times over (the states repeat, so most
    come from the cache), equals what Rasa's RulePolicy finds for the same tracker, with
    and without the user's text; a policy the engine does not serve (one in training)
    never caches."""
    assert prediction_cache.installed() and engine.prediction_cache > 0
    original, cached = prediction_cache._original_rules, prediction_cache.find_action_from_rules
    computed: list[int] = []
    counting = counted(original, computed)
    seen: list[tuple[Any, ...]] = []

    def recording(self: Any, tracker: Any, domain: Any, use_text_for_last_user_input: bool) -> Any:
        result = cached(self, tracker, domain, use_text_for_last_user_input)
        # what Rasa finds for this tracker, now (later events change its latest message)
        expected = original(self, tracker, domain, use_text_for_last_user_input)
        seen.append((self, tracker.copy(), domain, use_text_for_last_user_input, result, expected))
        return result

    monkeypatch.setattr(prediction_cache, "_original_rules", counting)
    monkeypatch.setattr(RulePolicy, "_find_action_from_rules", recording)
    for text in BLOCK * 3:
        await say(engine, "rules-cache", text)
    assert len(seen) > 100 and len(computed) < len(seen) / 3  # most came from the cache
    assert {found[0] for *_, found, _ in seen} >= {"utter_greet", "order_status_form"}
    assert all(found == expected for *_, found, expected in seen)

    policy = seen[0][0]
    unserved = copy.copy(policy)
    unserved.__dict__.pop(prediction_cache.RULES_ATTR)
    computed.clear()
    for _ in range(2):
        cached(unserved, seen[0][1], seen[0][2], seen[0][3])
    assert len(computed) == 2
