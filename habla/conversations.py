"""``habla test``: conversation tests in Rasa's test-story format, through the real turn.

A test file is Rasa's end-to-end test-story format (``rasa test core``)::

    stories:
      - story: opening hours in Spanish
        metadata: {language: es}       # habla: the conversation's language (a prior)
        steps:
          - user: |
              ¿a qué hora abrís?
            intent: opening_hours      # the intent NLU must predict (optional)
            entities: [{product: mug}] # and its entities (optional)
            language: es               # habla: the turn's language (default: the story's)
          - action: utter_opening_hours   # the next action Rasa runs
          - bot: "Abrimos de lunes a viernes ..."  # or the text the user receives

As in Rasa, a ``bot:`` step stands for the action that sent that text; habla adds one
thing: a ``bot:`` step right after an ``action:`` step that sent that text checks what
that action sent (a form's question, an action's ``utter_*``) rather than standing for
one more action. ``- intent: greet`` with no ``user:`` sends ``/greet``; entities can
be marked up in the text (``[hoodie](product)``) or listed under ``entities:``. ``slot_was_set`` and
``active_loop`` steps are accepted and not checked. Each story is one new conversation
through :meth:`Runtime.converse` (the turn's stages: language detection, Rasa,
localisation, delivery to an in-memory channel); after every user message the intent,
the entities, the turn's language, the actions Rasa ran (from the conversation's
events, ``action_listen`` left out) and the texts delivered are compared with the
story, and the first divergence ends it.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.messages import BotReply, Delivery, InboundMessage
from runtime.output import OutputChannel

SKIPPED_ACTIONS = {"action_listen", "action_session_start"}
CHANNEL = "test"


@dataclass(frozen=True)
class Step:
    kind: str  # user | action | bot
    value: str  # the user's text, the action's name, the bot's text
    intent: str = ""
    entities: tuple[tuple[str, str], ...] | None = None
    language: str = ""


@dataclass(frozen=True)
class Story:
    name: str
    file: str
    steps: tuple[Step, ...]
    language: str = ""


@dataclass
class Divergence:
    turn: int  # the user message (1-based) after which it diverged
    user: str
    expected: str
    actual: str


@dataclass
class StoryResult:
    story: Story
    divergence: Divergence | None = None
    error: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.divergence is None and not self.error


class CollectingOutput(OutputChannel):
    """An in-memory channel: what the turn delivers, in order."""

    def __init__(self) -> None:
        self.sent: list[BotReply] = []

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.sent.append(reply)
        return [Delivery(ok=True, provider_id=f"test-{len(self.sent)}")]

    def numbers_choices(self, reply: BotReply) -> bool:
        return False  # buttons are tapped in tests (their payload), not numbered


def story_files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml"))
        else:
            out.append(path)
    return out


def read_stories(paths: Iterable[Path]) -> list[Story]:
    """Every story in the files (folders: their .yml files); ValueError when malformed."""
    stories = []
    for path in story_files(paths):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, raw in enumerate(doc.get("stories") or []):
            name = str(raw.get("story") or f"story {i + 1}")
            where = f"{path}: {name}"
            meta = raw.get("metadata") or {}
            parsed = (_step(s, where) for s in raw.get("steps") or [])
            steps = tuple(s for s in parsed if s is not None)
            if not steps or steps[0].kind != "user":
                raise ValueError(f"{where}: a story starts with a user step")
            stories.append(Story(name, str(path), steps, str(meta.get("language") or "")))
    return stories


def _step(raw: Any, where: str) -> Step | None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a step must be a mapping, not {raw!r}")
    if "user" in raw or "intent" in raw:
        text = str(raw.get("user") or "").strip() or f"/{raw['intent']}"
        text, marked = _annotations(text)
        entities = tuple(sorted(marked)) if marked else None
        if raw.get("entities") is not None:
            pairs = []
            for e in raw["entities"]:
                if isinstance(e, dict) and "entity" in e:
                    pairs.append((str(e["entity"]), str(e.get("value", ""))))
                elif isinstance(e, dict):
                    pairs += [(str(k), str(v)) for k, v in e.items()]
                else:
                    pairs.append((str(e), ""))
            entities = tuple(sorted(pairs))
        return Step(
            "user",
            text,
            intent=str(raw.get("intent") or ""),
            entities=entities,
            language=str(raw.get("language") or ""),
        )
    if "action" in raw:
        return Step("action", str(raw["action"]))
    if "bot" in raw:
        return Step("bot", " ".join(str(raw["bot"]).split()))
    if {"slot_was_set", "active_loop", "checkpoint", "or"} & set(raw):
        return None  # the conversation's state: not checked
    raise ValueError(f"{where}: unknown step {raw!r}")


_ANNOTATION = re.compile(r"\[([^\]]+)\](?:\((\w+)(?::([^)]+))?\)|(\{[^}]*\}))")


def _annotations(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Rasa's entity markup in a user text: ``[hoodie](product)``, ``[tee](product:t-shirt)``
    or ``[tee]{"entity": "product", "value": "t-shirt"}``: the plain text, the entities."""
    if text.startswith("/"):
        return text, []
    found: list[tuple[str, str]] = []

    def plain(m: re.Match[str]) -> str:
        if m.group(2):
            found.append((m.group(2), m.group(3) or m.group(1)))
        else:
            try:
                spec = json.loads(m.group(4))
            except ValueError:
                return m.group()
            found.append((str(spec.get("entity")), str(spec.get("value") or m.group(1))))
        return m.group(1)

    return _ANNOTATION.sub(plain, text), found


@dataclass
class _Actual:
    intent: str
    entities: tuple[tuple[str, str], ...]
    language: str
    actions: list[tuple[str, list[str]]]  # (action, the texts the user got from it)
    system: tuple[tuple[str, str], ...] = ()  # system entities and sentiment


SYSTEM_EXTRACTORS = frozenset({"SystemEntityExtractor", "SentimentAnalyzer"})
"""Extractors that read every message (nlu/system_entities.py, nlu/sentiment.py): what
they found is compared only when the story names their entities."""


def _turns(steps: Sequence[Step]) -> list[tuple[Step, list[Step]]]:
    turns: list[tuple[Step, list[Step]]] = []
    for step in steps:
        if step.kind == "user":
            turns.append((step, []))
        else:
            turns[-1][1].append(step)
    return turns


async def run_story(runtime: Any, story: Story) -> StoryResult:
    """One story as one new conversation through ``runtime`` (habla/server.py
    ``Runtime``, started)."""
    result = StoryResult(story)
    conversation = f"test-{uuid.uuid4().hex[:12]}"
    if story.language:
        await runtime.stores.languages.set(conversation, story.language, False)
    seen = len(await runtime.conversation_events(conversation))
    ids = itertools.count(1)
    for number, (user, expected) in enumerate(_turns(story.steps), start=1):
        output = CollectingOutput()
        msg = InboundMessage(
            channel=CHANNEL,
            conversation_id=conversation,
            message_id=f"{conversation}-{next(ids)}",
            text=user.value,
        )
        try:
            ctx = await runtime.converse(msg, output)
        except Exception as e:
            result.error = f"turn {number} ({user.value!r}) raised {type(e).__name__}: {e}"
            return result
        events = await runtime.conversation_events(conversation)
        actual = _actual(events[seen:], output.sent, ctx.language)
        seen = len(events)
        result.turns.append(
            {"user": user.value, "intent": actual.intent, "language": actual.language,
             "actions": [a for a, _ in actual.actions],
             "bot": [t for _, texts in actual.actions for t in texts]}
        )  # fmt: skip
        divergence = _compare(user, expected, actual, story.language)
        if divergence is not None:
            divergence.turn = number
            result.divergence = divergence
            return result
    return result


def _actual(events: list[dict[str, Any]], sent: list[BotReply], language: str) -> _Actual:
    intent, entities = "", tuple[tuple[str, str], ...]()
    system = tuple[tuple[str, str], ...]()
    actions: list[tuple[str, list[str]]] = []
    uttered = 0
    for event in events:
        kind = event.get("event")
        if kind == "user":
            parse = event.get("parse_data") or {}
            intent = str((parse.get("intent") or {}).get("name") or "")
            found = [e for e in parse.get("entities") or [] if isinstance(e, dict)]
            entities, system = (
                tuple(
                    sorted(
                        (str(e.get("entity")), str(e.get("value")))
                        for e in found
                        if (e.get("extractor") in SYSTEM_EXTRACTORS) == of_system
                    )
                )
                for of_system in (False, True)
            )
        elif kind == "action" and event.get("name") not in SKIPPED_ACTIONS:
            actions.append((str(event.get("name")), []))
        elif kind == "bot":
            # the delivered reply (localised) stands for the text Rasa produced
            text = sent[uttered].text if uttered < len(sent) else str(event.get("text") or "")
            uttered += 1
            if actions:
                actions[-1][1].append(" ".join(text.split()))
    return _Actual(intent, entities, language, actions, system)


def _compare(
    user: Step, expected: list[Step], actual: _Actual, story_language: str
) -> Divergence | None:
    def diverged(what: str, want: str, got: str) -> Divergence:
        return Divergence(0, user.value, f"{what}: {want}", f"{what}: {got}")

    if user.intent and user.intent != actual.intent:
        return diverged("intent", user.intent, actual.intent or "(none)")
    if user.entities is not None:
        by_name = any(not v for _, v in user.entities)  # [x](entity): the name only
        named = {n for n, _ in user.entities}
        found = actual.entities + tuple(e for e in actual.system if e[0] in named)
        got = tuple(sorted((n, "" if by_name else v) for n, v in found))
        want = tuple(sorted((n, "" if by_name else v) for n, v in user.entities))
        if got != want:
            return diverged("entities", _fmt(user.entities), _fmt(actual.entities))
    language = user.language or story_language
    if language and language != actual.language:
        return diverged("language", language, actual.language or "(none)")
    actions, at = actual.actions, 0
    for i, step in enumerate(expected):
        if step.kind == "bot" and i and expected[i - 1].kind == "action" and at:
            before = actions[at - 1]
            if step.value in before[1]:
                continue  # (habla) what the action before it sent
            if at >= len(actions) or step.value not in actions[at][1]:
                return diverged("bot", step.value, _fmt_action(*before))
        if at >= len(actions):
            return diverged(step.kind, step.value, "(the bot waited for the user)")
        name, texts = actions[at]
        at += 1
        if step.kind == "action" and step.value != name:
            return diverged("action", step.value, _fmt_action(name, texts))
        if step.kind == "bot" and step.value not in texts:
            return diverged("bot", step.value, _fmt_action(name, texts))
    if len(actions) > at:
        name, texts = actions[at]
        return diverged("action", "(wait for the user)", _fmt_action(name, texts))
    return None


def _fmt(entities: Sequence[tuple[str, str]] | None) -> str:
    return ", ".join(f"{k}={v}" if v else k for k, v in entities or ()) or "(none)"


def _fmt_action(name: str, texts: list[str]) -> str:
    return f"{name} {texts[0]!r}" if texts else name


def report(results: Sequence[StoryResult]) -> str:
    lines = []
    for r in results:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(f"{mark}  {r.story.name}  ({Path(r.story.file).name})")
        if r.error:
            lines.append(f"      {r.error}")
        elif r.divergence is not None:
            d = r.divergence
            lines.append(f"      after user message {d.turn}: {d.user!r}")
            lines.append(f"        expected  {d.expected}")
            lines.append(f"        actual    {d.actual}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
