"""The 1,000th turn as cheap as the 10th: Rasa 3.6's history work made incremental.

On every prediction Rasa 3.6 recomputes from the whole conversation, so a turn's cost
grows with its length (in-process under cProfile, turn 1,000 of the example bot took
594 ms, 27× turn 10):

- ``DialogueStateTracker.applied_events()`` folds over every event (undoing reverted
  and repeated loop turns), several times per prediction;
- every policy asks for the dialogue *states* of every past turn, and
  ``Domain.states_for_tracker_history`` replays every event into a fresh tracker to
  build them (3-4 times per prediction: memoization, TED, the rule policy twice),
  although each policy then keeps only its last ``max_history`` states;
- ``tracker.copy()``, taken before every action, replays every event once more.

Each is replaced by the same computation done incrementally, with the same result:

- :func:`applied_events` continues the previous fold from where it ended (events are
  only ever appended; it starts again when the log was replaced or a new loop name
  appears, which changes how older events fold);
- :func:`recent_states` keeps, per tracker and per kind of request, snapshots of the
  replay (the replayed tracker, the loop's variables and the last states) and resumes
  from the newest snapshot whose prefix of applied events is unchanged; it returns
  only the last ``window`` states, which is all a ``MaxHistoryTrackerFeaturizer``
  keeps. The rule policy's featurizer has no ``max_history``; it is given the longest
  rule (and the longest history its lookup stores) plus one, beyond which no rule
  match and no lookup key can differ (see :func:`rule_window`);
- :func:`copy_tracker` copies the tracker's current state instead of recomputing it
  (every state change in Rasa goes through an event, so the two are equal);
- :func:`action_call` serializes for a custom action only the events it has not
  serialized before (each event's dict is kept once no later step can change it:
  everything before the latest user message); in-process actions read copies
  (nlu/actions.py ``CopyOnReadEvents``);
- :func:`temporary_tracker`, the tracker a form validates on, is a copy plus the
  form's events instead of a replay of the whole conversation;
- :func:`idx_after_latest_restart` continues its scan from where it ended, and
  :func:`is_action_limit_reached` reads the events from the end without copying them.

Event objects are never rewritten in the middle of a conversation; the caches check
identity (``is``) at the point where they resume. ``tests/test_history.py`` runs long
conversations with forms, rules conditioned on slots, reverts and restarts both ways
and requires identical predictions and events. ``HABLA_FLAT_HISTORY=false``
(``engine.flat_history``, on by default) leaves Rasa's own code in place.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import rasa
from rasa.core.actions.action import RemoteAction
from rasa.core.actions.forms import FormAction
from rasa.core.featurizers.tracker_featurizers import (
    MaxHistoryTrackerFeaturizer,
    _is_prev_action_unlikely_intent_in_state,
)
from rasa.core.policies.policy import Policy
from rasa.core.policies.rule_policy import (
    RULES,
    RULES_FOR_LOOP_UNHAPPY_PATH,
    RULES_NOT_IN_STORIES,
    RulePolicy,
)
from rasa.core.processor import MessageProcessor
from rasa.shared.core.constants import (
    ACTION_LISTEN_NAME,
    ACTION_SESSION_START_NAME,
    PREVIOUS_ACTION,
    REQUESTED_SLOT,
)
from rasa.shared.core.domain import Domain, State
from rasa.shared.core.events import (
    ActionExecuted,
    ActionReverted,
    ActiveLoop,
    Event,
    Restarted,
    SessionStarted,
    SlotSet,
    UserUtteranceReverted,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker, EventVerbosity

from nlu.actions import CopyOnReadEvents, InProcessActionEndpoint

MEMO_ATTR = "_habla_history"
WINDOW_ATTR = "_habla_window"  # on a rule policy's featurizer: the states it can use
SNAPSHOTS = 8  # replay points kept per kind of request (a loop's undo reaches back)

_enabled = False
_original: dict[str, Any] = {}


class _Memo:
    """A tracker's caches. A deep copy or a pickle of the tracker starts empty; a
    :func:`copy_tracker` copy shares the (never mutated) entries."""

    __slots__ = ("applied", "states", "serialized", "restart")

    def __init__(self) -> None:
        self.restart: Optional[tuple[int, Event, Event, int]] = None
        self.applied: Optional[_Applied] = None
        self.states: dict[tuple[Any, ...], _States] = {}
        self.serialized = _Serialized()

    def __copy__(self) -> _Memo:
        return _Memo()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Memo:
        return _Memo()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Memo, ())


@dataclass(frozen=True)
class _Applied:
    n: int  # events folded
    first: Optional[Event]  # events[0] then
    last: Optional[Event]  # events[n - 1] then
    loop_names: frozenset[str]
    events: list[Event]  # the fold's result: never mutated once stored


@dataclass(frozen=True)
class _Snapshot:
    pos: int  # applied events replayed
    last: Optional[Event]  # applied[pos - 1]
    tracker: DialogueStateTracker  # the replay after them: never mutated once stored
    last_ml: Any  # states_for_tracker_history's loop variables at that point
    hidden: bool
    prev: Optional[State]  # the last state produced (before the unlikely-intent filter)
    tail: tuple[State, ...]  # the last `keep` states (after it)


@dataclass(frozen=True)
class _States:
    domain: Domain
    rule_only_data: Any
    keep: int
    snapshots: tuple[_Snapshot, ...]


class _Serialized:
    """Events already serialized, shared by a tracker and its copies (which hold the
    same event objects in the same places)."""

    __slots__ = ("count", "first", "last", "dicts")

    def __init__(self) -> None:
        self.count = 0
        self.first: Optional[Event] = None
        self.last: Optional[Event] = None
        self.dicts: list[dict[str, Any]] = []


def _memo(tracker: DialogueStateTracker) -> _Memo:
    memo = tracker.__dict__.get(MEMO_ATTR)
    if memo is None:
        memo = tracker.__dict__[MEMO_ATTR] = _Memo()
    return memo


# ---------------------------------------------------------------- applied events


def applied_events(self: DialogueStateTracker) -> list[Event]:
    """``DialogueStateTracker.applied_events``, continuing the previous fold."""
    return list(_applied(self))


def _applied(self: DialogueStateTracker) -> list[Event]:
    """The applied events, as the cached list itself: read it, never change it."""
    events = self.events
    n = len(events)
    memo = _memo(self)
    cached = memo.applied
    if (
        cached is not None
        and cached.n > 0
        and n >= cached.n
        and events[0] is cached.first
        and events[cached.n - 1] is cached.last
    ):
        if n == cached.n:
            return cached.events
        new = [events[i] for i in range(cached.n, n)]
        names = {e.name for e in new if isinstance(e, ActiveLoop) and e.name}
        if names <= cached.loop_names:
            applied = list(cached.events)  # copies sharing the old list keep it intact
            _fold(self, new, cached.loop_names, applied)
            memo.applied = _Applied(n, events[0], events[-1], cached.loop_names, applied)
            return applied
    result: list[Event] = _original["applied_events"](self)
    loop_names = frozenset(e.name for e in events if isinstance(e, ActiveLoop) and e.name)
    first, last = (events[0], events[-1]) if n else (None, None)
    memo.applied = _Applied(n, first, last, loop_names, result)
    return result


def _fold(
    tracker: DialogueStateTracker,
    new: list[Event],
    loop_names: frozenset[str],
    applied: list[Event],
) -> None:
    """The body of Rasa 3.6's ``applied_events`` loop, over the events it has not seen."""
    for event in new:
        if isinstance(event, (Restarted, SessionStarted)):
            applied.clear()
        elif isinstance(event, ActionReverted):
            tracker._undo_till_previous(ActionExecuted, applied)
        elif isinstance(event, UserUtteranceReverted):
            tracker._undo_till_previous(UserUttered, applied)
            tracker._undo_till_previous(ActionExecuted, applied)
        elif (
            isinstance(event, ActionExecuted)
            and event.action_name in loop_names
            and not tracker._first_loop_execution_or_unhappy_path(event.action_name, applied)
        ):
            tracker._undo_till_previous_loop_execution(event.action_name, applied)
        else:
            applied.append(event)


def idx_after_latest_restart(self: DialogueStateTracker) -> int:
    """``DialogueStateTracker.idx_after_latest_restart``, scanning only new events."""
    events = self.events
    n = len(events)
    memo = _memo(self)
    cached = memo.restart
    if cached is not None and cached[0] <= n and events[0] is cached[1]:
        if events[cached[0] - 1] is cached[2]:
            count, _, _, idx = cached
            for i in range(count, n):
                if isinstance(events[i], Restarted):
                    idx = i + 1
            memo.restart = (n, events[0], events[-1], idx) if n else None
            return idx
    idx = 0
    for i, event in enumerate(events):
        if isinstance(event, Restarted):
            idx = i + 1
    memo.restart = (n, events[0], events[-1], idx) if n else None
    return idx


# ---------------------------------------------------------------- states


def recent_states(
    tracker: DialogueStateTracker,
    domain: Domain,
    window: int,
    omit_unset_slots: bool = False,
    ignore_rule_only_turns: bool = False,
    rule_only_data: Optional[dict[str, Any]] = None,
    drop_unlikely_intent: bool = False,
) -> list[State]:
    """The last ``window`` of ``domain.states_for_tracker_history(tracker, ...)`` (after
    removing ``action_unlikely_intent`` turns if ``drop_unlikely_intent``), computed
    from the newest snapshot that still holds. The states are fresh copies: callers
    may edit them, as Rasa's featurizers do."""
    applied = _applied(tracker) if _enabled else tracker.applied_events()
    memo = _memo(tracker)
    key = (id(domain), omit_unset_slots, ignore_rule_only_turns, drop_unlikely_intent)
    entry = memo.states.get(key)
    start: Optional[_Snapshot] = None
    if entry is not None and entry.domain is domain and entry.keep >= window:
        if entry.rule_only_data == rule_only_data:
            start = _resume_point(entry.snapshots, applied)
    keep = max(window, entry.keep if entry is not None else 0)
    if start is None:
        entry = None
        replay = _replay_tracker(tracker)
        last_ml: Any = None
        hidden = False
        prev: Optional[State] = None
        tail: deque[State] = deque(maxlen=keep)
        pos = 0
    else:
        replay = _clone(start.tracker)
        last_ml, hidden, prev = start.last_ml, start.hidden, start.prev
        tail = deque(start.tail, maxlen=keep)
        pos = start.pos

    def step(hide_rule_turn: bool) -> None:
        nonlocal last_ml, hidden, prev
        state, last_ml, hidden = _state(
            domain,
            replay,
            hide_rule_turn,
            omit_unset_slots,
            ignore_rule_only_turns,
            rule_only_data,
            last_ml,
            hidden,
            prev,
        )
        if state is not None:
            prev = state
            if not (drop_unlikely_intent and _is_prev_action_unlikely_intent_in_state(state)):
                tail.append(state)

    for event in applied[pos:]:
        if isinstance(event, ActionExecuted):
            step(event.hide_rule_turn)
        replay.update(event)

    snapshot = _Snapshot(
        len(applied), applied[-1] if applied else None, replay, last_ml, hidden, prev, tuple(tail)
    )
    if start is None or snapshot.pos != start.pos or snapshot.last is not start.last:
        kept = entry.snapshots if entry is not None else ()
        kept = tuple(s for s in kept if s.pos < snapshot.pos)[-(SNAPSHOTS - 1) :]
        memo.states[key] = _States(domain, rule_only_data, keep, (*kept, snapshot))

    step(False)  # the state after the last event (not kept: it changes with the next)
    return [_copy_state(s) for s in list(tail)[-window:]]


def _resume_point(snapshots: tuple[_Snapshot, ...], applied: list[Event]) -> Optional[_Snapshot]:
    """The newest snapshot whose applied events are still the start of ``applied``.

    A fold only removes events and appends newer ones, and an event object appears once
    in a conversation, so if ``applied[pos - 1]`` is the snapshot's last event, every
    event before it is unchanged too."""
    for snapshot in reversed(snapshots):
        if snapshot.pos > len(applied):
            continue
        if snapshot.pos == 0 or applied[snapshot.pos - 1] is snapshot.last:
            return snapshot
    return None


def _state(
    domain: Domain,
    tracker: DialogueStateTracker,
    hide_rule_turn: bool,
    omit_unset_slots: bool,
    ignore_rule_only_turns: bool,
    rule_only_data: Optional[dict[str, Any]],
    last_ml: Any,
    hidden: bool,
    prev: Optional[State],
) -> tuple[Optional[State], Any, bool]:
    """One iteration of Rasa 3.6's ``Domain.states_for_tracker_history`` loop."""
    if ignore_rule_only_turns:
        if not hidden:
            last_ml = domain._get_prev_action_sub_state(tracker)
        if (
            not tracker.followup_action
            and not tracker.latest_action_name == tracker.active_loop_name
        ):
            hidden = hide_rule_turn
        if hidden:
            return None, last_ml, hidden
    state = domain.get_active_state(tracker, omit_unset_slots=omit_unset_slots)
    if ignore_rule_only_turns:
        domain._remove_rule_only_features(state, rule_only_data)
        if prev is not None:
            domain._substitute_rule_only_user_input(state, prev)
        if last_ml:
            state[PREVIOUS_ACTION] = last_ml
    return domain._clean_state(state), last_ml, hidden


def _copy_state(state: State) -> State:
    return {kind: dict(sub) if isinstance(sub, dict) else sub for kind, sub in state.items()}


def _replay_tracker(tracker: DialogueStateTracker) -> DialogueStateTracker:
    """What ``generate_all_prior_trackers`` starts from. It keeps no events: the events
    an applied list holds never read the tracker's events (only reverts, restarts and
    session starts do, and those are never in it)."""
    replay = tracker.init_copy()
    replay.events = deque(maxlen=1)
    return replay


def _clone(tracker: DialogueStateTracker) -> DialogueStateTracker:
    """The state of ``tracker`` in a new object (events not included)."""
    clone = copy.copy(tracker)
    clone.__dict__.pop(MEMO_ATTR, None)
    clone.slots = type(tracker.slots)()
    clone.slots.update({name: shallow_copy(slot) for name, slot in tracker.slots.items()})
    clone.active_loop = copy.copy(tracker.active_loop)
    clone.latest_action = (
        dict(tracker.latest_action) if tracker.latest_action else tracker.latest_action
    )
    clone.events = deque(tracker.events, maxlen=tracker.events.maxlen)
    return clone


# ---------------------------------------------------------------- copy


def shallow_copy(obj: Any) -> Any:
    """``copy.copy(obj)``, without its ``__reduce_ex__`` round trip for an object of a
    plain class (a ``__dict__``, no ``__slots__``, no copy or pickle hooks of its own):
    a new instance with the same attributes, which is what ``copy.copy`` makes of it.
    Rasa's slots are such objects, and a tracker's copy copies every one of them."""
    cls: Any = type(obj)
    if cls not in _PLAIN:
        _PLAIN[cls] = (
            not hasattr(cls, "__copy__")
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__getstate__", None) is getattr(object, "__getstate__", None)
            and not hasattr(cls, "__setstate__")
            and not any(_slot_names(k) for k in cls.__mro__)
            and hasattr(obj, "__dict__")
        )
    if not _PLAIN[cls]:
        return copy.copy(obj)
    duplicate = cls.__new__(cls)
    duplicate.__dict__.update(obj.__dict__)
    return duplicate


_PLAIN: dict[type, bool] = {}


def _slot_names(cls: type) -> set[str]:
    """The ``__slots__`` a class declares, beyond ``__dict__`` and ``__weakref__``
    (``abc.ABC``, a base of Rasa's slots, declares none)."""
    names = vars(cls).get("__slots__", ())
    return ({names} if isinstance(names, str) else set(names)) - {"__dict__", "__weakref__"}


def copy_tracker(self: DialogueStateTracker) -> DialogueStateTracker:
    """``DialogueStateTracker.copy``: the same events and state, without replaying.

    Rasa's copy replays every event into ``init_copy()``; the result differs from
    ``self`` only in what ``init_copy`` leaves out (model and assistant ids, the
    sender's source), which this copy leaves out too."""
    duplicate = self.init_copy()
    duplicate.events.extend(self.events)
    duplicate.slots = type(self.slots)()
    duplicate.slots.update({name: shallow_copy(slot) for name, slot in self.slots.items()})
    duplicate._paused = self._paused
    duplicate.followup_action = self.followup_action
    duplicate.latest_action = dict(self.latest_action) if self.latest_action is not None else None
    duplicate.latest_message = self.latest_message
    duplicate.latest_bot_utterance = self.latest_bot_utterance
    duplicate.active_loop = copy.copy(self.active_loop)
    memo = self.__dict__.get(MEMO_ATTR)
    if memo is not None:
        self.idx_after_latest_restart()  # brought up to date here, once, for the copies
        shared = _memo(duplicate)
        shared.restart = memo.restart
        shared.applied = memo.applied
        shared.states = dict(memo.states)
        shared.serialized = memo.serialized
    return duplicate


# ---------------------------------------------------------------- custom actions


def serialized_events(tracker: DialogueStateTracker) -> list[dict[str, Any]]:
    """``[e.as_dict() for e in tracker.events]``, reusing the dicts of events before the
    latest user message (nothing changes those events any more: Rasa edits only the
    latest user message, and only new events get timestamps and model ids). The
    reused dicts are shared: callers must not edit them."""
    events = tracker.events
    n = len(events)
    stable = n
    while stable > 0 and not isinstance(events[stable - 1], UserUttered):
        stable -= 1
    stable = max(stable - 1, 0)  # the latest user message itself may still change
    cache = _memo(tracker).serialized
    reused = 0
    if cache.count and cache.count <= n and events[0] is cache.first:
        if events[cache.count - 1] is cache.last:
            reused = min(cache.count, stable)
    if reused < stable:
        dicts = cache.dicts[:reused] if reused < cache.count else cache.dicts
        dicts.extend(events[i].as_dict() for i in range(reused, stable))
        cache.count, cache.first, cache.last, cache.dicts = (
            stable,
            events[0],
            events[stable - 1],
            dicts,
        )
        reused = stable
    out = cache.dicts[:reused]
    out.extend(events[i].as_dict() for i in range(reused, n))
    return out


def action_call(
    self: RemoteAction, tracker: DialogueStateTracker, domain: Domain
) -> dict[str, Any]:
    """``RemoteAction._action_call_format`` with :func:`serialized_events`."""
    state = tracker.current_state(EventVerbosity.NONE)
    events = serialized_events(tracker)
    if isinstance(self.action_endpoint, InProcessActionEndpoint):
        state["events"] = CopyOnReadEvents(events)  # the action reads copies
    else:
        state["events"] = events  # sent as JSON
    result = {
        "next_action": self._name,
        "sender_id": tracker.sender_id,
        "tracker": state,
        "version": rasa.__version__,
    }
    if not self._is_selective_domain_enabled() or domain.does_custom_action_explicitly_need_domain(
        self.name()
    ):
        result["domain"] = domain.as_dict()
    return result


def temporary_tracker(
    self: FormAction,
    current_tracker: DialogueStateTracker,
    additional_events: list[Event],
    domain: Domain,
) -> DialogueStateTracker:
    """``FormAction._temporary_tracker`` (the tracker a form's validation action sees):
    Rasa replays every event since the latest restart into a new tracker; with no
    restart in the tracker that is a copy of it, and the form's events are added the
    same way."""
    if current_tracker.idx_after_latest_restart() != 0:
        return _original["temporary_tracker"](self, current_tracker, additional_events, domain)
    tracker = copy_tracker(current_tracker)
    tracker.update(SlotSet(REQUESTED_SLOT, self.get_slot_to_fill(current_tracker)))
    tracker.update(ActionExecuted(self.name()))
    for event in additional_events:
        tracker.update(event)
    return tracker


def is_action_limit_reached(
    self: MessageProcessor, tracker: DialogueStateTracker, should_predict_another_action: bool
) -> bool:
    """``MessageProcessor.is_action_limit_reached``, reading the events from the end
    instead of copying and reversing all of them first."""
    predicted = 0
    for event in reversed(tracker.events):
        if isinstance(event, ActionExecuted):
            if event.action_name in (ACTION_LISTEN_NAME, ACTION_SESSION_START_NAME):
                break
            predicted += 1
    return predicted >= self.max_number_of_predictions and should_predict_another_action


# ---------------------------------------------------------------- featurizers


def prediction_states(
    self: MaxHistoryTrackerFeaturizer,
    trackers: list[DialogueStateTracker],
    domain: Domain,
    use_text_for_last_user_input: bool = False,
    ignore_rule_only_turns: bool = False,
    rule_only_data: Optional[dict[str, Any]] = None,
    ignore_action_unlikely_intent: bool = False,
) -> list[list[State]]:
    """``MaxHistoryTrackerFeaturizer.prediction_states`` from :func:`recent_states`."""
    window = self.max_history or getattr(self, WINDOW_ATTR, None)
    if not window:
        return _original["prediction_states"](
            self,
            trackers,
            domain,
            use_text_for_last_user_input,
            ignore_rule_only_turns,
            rule_only_data,
            ignore_action_unlikely_intent,
        )
    trackers_as_states = [
        recent_states(
            tracker,
            domain,
            window,
            ignore_rule_only_turns=ignore_rule_only_turns,
            rule_only_data=rule_only_data,
            drop_unlikely_intent=ignore_action_unlikely_intent,
        )
        for tracker in trackers
    ]
    self._choose_last_user_input(trackers_as_states, use_text_for_last_user_input)
    return trackers_as_states


def rule_window(policy: RulePolicy) -> int:
    """How many of the latest states the rule policy can tell apart.

    ``_get_possible_keys`` treats every rule as matching at turns beyond its length,
    so states older than the longest rule never change which rules match. The lookup
    key of a turn no rule matched is only compared with ``rules_not_in_stories``:
    a history longer than its longest entry cannot equal any entry, and neither can
    the window, which is longer still."""
    longest = 0
    for table in (RULES, RULES_FOR_LOOP_UNHAPPY_PATH, RULES_NOT_IN_STORIES):
        for key in policy.lookup.get(table, []):
            if isinstance(key, str) and key.startswith("["):
                try:
                    longest = max(longest, len(json.loads(key)))
                except ValueError:
                    continue
    return longest + 1


def rule_prediction_states(
    self: RulePolicy,
    tracker: DialogueStateTracker,
    domain: Domain,
    use_text_for_last_user_input: bool = False,
    rule_only_data: Optional[dict[str, Any]] = None,
) -> list[State]:
    """``Policy._prediction_states`` for the rule policy, with its window set."""
    featurizer = self.featurizer
    if isinstance(featurizer, MaxHistoryTrackerFeaturizer) and not featurizer.max_history:
        if getattr(featurizer, WINDOW_ATTR, None) is None:
            setattr(featurizer, WINDOW_ATTR, rule_window(self))
    return Policy._prediction_states(
        self, tracker, domain, use_text_for_last_user_input, rule_only_data
    )


# ---------------------------------------------------------------- switch


def install() -> None:
    """Replace Rasa's whole-history computations with the incremental ones."""
    global _enabled
    if _enabled:
        return
    if not _original:
        _original["applied_events"] = DialogueStateTracker.applied_events
        _original["copy"] = DialogueStateTracker.copy
        _original["prediction_states"] = MaxHistoryTrackerFeaturizer.prediction_states
        _original["rule_prediction_states"] = RulePolicy.__dict__.get("_prediction_states")
        _original["action_call"] = RemoteAction._action_call_format
        _original["temporary_tracker"] = FormAction._temporary_tracker
        _original["is_action_limit_reached"] = MessageProcessor.is_action_limit_reached
        _original["idx_after_latest_restart"] = DialogueStateTracker.idx_after_latest_restart
    DialogueStateTracker.applied_events = applied_events
    DialogueStateTracker.copy = copy_tracker
    MaxHistoryTrackerFeaturizer.prediction_states = prediction_states
    RulePolicy._prediction_states = rule_prediction_states
    RemoteAction._action_call_format = action_call
    FormAction._temporary_tracker = temporary_tracker
    MessageProcessor.is_action_limit_reached = is_action_limit_reached
    DialogueStateTracker.idx_after_latest_restart = idx_after_latest_restart
    _enabled = True


def uninstall() -> None:
    """Rasa's own computations again (tests compare the two)."""
    global _enabled
    if not _enabled:
        return
    DialogueStateTracker.applied_events = _original["applied_events"]
    DialogueStateTracker.copy = _original["copy"]
    MaxHistoryTrackerFeaturizer.prediction_states = _original["prediction_states"]
    if _original["rule_prediction_states"] is None:
        del RulePolicy._prediction_states
    else:
        RulePolicy._prediction_states = _original["rule_prediction_states"]
    RemoteAction._action_call_format = _original["action_call"]
    FormAction._temporary_tracker = _original["temporary_tracker"]
    MessageProcessor.is_action_limit_reached = _original["is_action_limit_reached"]
    DialogueStateTracker.idx_after_latest_restart = _original["idx_after_latest_restart"]
    _enabled = False


def installed() -> bool:
    return _enabled
