"""What the inspector chat (``/``) shows of a turn, read from the turn itself.

The REST channel answers a request that asks for ``"debug": true`` (with the channel's
token) with the turn's record next to its messages:

* from the conversation's events (Rasa's tracker, as dicts): the intent the NLU
  chose with its confidence and ranking, the entities, the slots whose value the turn
  changed (before → after), and the actions that ran (with the policy that chose them);
* from the turn's context: the language decision (``i18n/stages.py`` records it in the
  message metadata: detected, kept or switched, and why), the voice note as heard and
  the voice that answered;
* for every reply, how the channels render it, by their own functions: Twilio
  WhatsApp's numbered text (``channels/twilio.py``), the Cloud API's message objects
  (``channels/graph.py`` ``render``: reply buttons, a list or numbered text) and what a
  caller hears (``channels/call_text.py`` ``spoken``: "For …, press 1.").

Pure functions: the REST channel hands them the events and the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels.call_text import spoken
from channels.graph import render
from channels.twilio import split_text
from runtime.messages import BotReply
from runtime.output import OutputChannel
from runtime.turn import TurnContext

MARKER = "inspect"
"""The metadata key the REST channel tags an inspected message with (a random id), so
its user event is found among the conversation's events."""

LANGUAGE_REASONS = {
    "requested": "the user asked for this language; it sticks until they ask for another",
    "sticky": "the language was asked for (or picked) earlier and sticks",
    "ambiguous": "too little language in the message (short, numbers, a common word): kept",
    "detected": "the detector (or the speech engine) was confident enough",
    "default": "first message and no confident detection: the default language",
    "prior": "the detector did not find another language clearly enough: kept",
}


def _slot_state(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Slot values after ``events`` (a restart or a new session clears them; a new
    session's carried-over slots follow it as slot events)."""
    slots: dict[str, Any] = {}
    for event in events:
        kind = event.get("event")
        if kind == "slot":
            slots[str(event.get("name"))] = event.get("value")
        elif kind in ("restart", "session_started", "reset_slots"):
            slots.clear()
    return slots


def _slot_changes(state: dict[str, Any], turn: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every change of a slot's value during the turn, in order (a form may fill a slot
    and its action clear it again: both show)."""
    state, changes = dict(state), []
    for event in turn:
        kind = event.get("event")
        if kind == "slot":
            name, value = str(event.get("name")), event.get("value")
            if state.get(name) != value:
                changes.append({"name": name, "before": state.get(name), "after": value})
            state[name] = value
        elif kind in ("restart", "reset_slots"):
            changes += [
                {"name": n, "before": v, "after": None} for n, v in state.items() if v is not None
            ]
            state.clear()
    return changes


def turn_events(events: Sequence[dict[str, Any]], marker: str) -> dict[str, Any]:
    """The turn of the user event tagged ``marker``: intent, entities, changed slots and
    actions. Empty values when the message never reached the dialogue (a failed turn)."""
    at = next(
        (
            i
            for i in range(len(events) - 1, -1, -1)
            if events[i].get("event") == "user"
            and (events[i].get("metadata") or {}).get(MARKER) == marker
        ),
        None,
    )
    if at is None:
        return {"intent": None, "entities": [], "slots": [], "actions": [], "text": ""}
    user = events[at]
    # the turn starts after the previous turn's action_listen: slots the runtime set
    # before the message (the language) and a new session's start belong to it
    previous_user = next((i for i in range(at - 1, -1, -1) if events[i].get("event") == "user"), -1)
    start = 0
    if previous_user >= 0:
        listen = next(
            (
                i
                for i in range(previous_user + 1, at)
                if events[i].get("event") == "action" and events[i].get("name") == "action_listen"
            ),
            at - 1,
        )
        start = listen + 1
    end = next((i for i in range(at + 1, len(events)) if events[i].get("event") == "user"), None)
    turn = events[start : len(events) if end is None else end]
    slots = _slot_changes(_slot_state(events[:start]), turn)
    parse = user.get("parse_data") or {}
    intent = parse.get("intent") or {}
    actions = [
        {
            "name": e.get("name"),
            "policy": e.get("policy"),
            "confidence": _round(e.get("confidence")),
        }
        for e in events[at + 1 : len(events) if end is None else end]
        if e.get("event") == "action" and e.get("name") != "action_listen"
    ]
    return {
        "text": user.get("text") or "",
        "intent": {"name": intent.get("name"), "confidence": _round(intent.get("confidence"))}
        if intent.get("name")
        else None,
        "intent_ranking": [
            {"name": r.get("name"), "confidence": _round(r.get("confidence"))}
            for r in (parse.get("intent_ranking") or [])[:5]
        ],
        "entities": [
            {
                key: _round(e.get(key)) if key == "confidence_entity" else e.get(key)
                for key in ("entity", "value", "start", "end", "extractor", "confidence_entity")
                if e.get(key) is not None
            }
            for e in parse.get("entities") or []
        ],
        "slots": slots,
        "actions": actions,
    }


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def language_decision(ctx: TurnContext) -> dict[str, Any] | None:
    """The turn's language decision (``i18n/stages.py`` DetectLanguage's record):
    detected, kept, switched or set, and why."""
    record = ctx.inbound.metadata.get("language")
    if not isinstance(record, dict):
        return None
    code, previous = record.get("code"), record.get("previous")
    outcome = "set" if previous is None else "kept" if code == previous else "switched"
    reason = str(record.get("reason") or "")
    return {
        **record,
        "outcome": outcome,
        "why": LANGUAGE_REASONS.get(reason, reason),
    }


def previews(reply: BotReply, language: str) -> dict[str, Any]:
    """How each channel renders ``reply``, by the channels' own functions."""
    media = [u for u in (reply.image, reply.attachment, reply.audio) if u]
    return {
        "twilio": {
            "bodies": split_text(OutputChannel.numbered_text(reply)),
            "media": len(media),
        },
        "whatsapp": render(reply),
        "call": spoken(reply, language or "en"),
    }


def inspection(ctx: TurnContext, events: Sequence[dict[str, Any]], marker: str) -> dict[str, Any]:
    """The ``debug`` section of an inspected REST turn."""
    voice = ctx.inbound.metadata.get("voice")
    return {
        **turn_events(events, marker),
        "language": language_decision(ctx),
        "voice_in": voice if isinstance(voice, dict) else None,
        "voice_out": {"engine": ctx.voice_out.engine, "voice": ctx.voice_out.voice}
        if ctx.voice_out is not None
        else None,
        "failed": ctx.failed,
        "replies": [previews(r, ctx.language) for r in ctx.replies],
    }
