"""What every log line of a turn carries, and the two log formats.

A turn has an id (``turn``): a short hash of the provider's message id, so the line
that accepted a webhook, the lines of its turn (here or in an engine worker), the line
of each reply sent and the status callbacks of those replies (where this process sent
them) all carry the same id, and no phone number or message id shows through it. It
lives in a :mod:`contextvars` variable: set when a message is accepted and when its
turn starts, inherited by the tasks a turn starts.

``HABLA_LOG_FORMAT=json`` writes one JSON object per line (``time``, ``level``,
``logger``, ``message``, ``turn`` when known, ``exc`` for a traceback); ``text`` (the
default) the usual line, with ``[turn]`` when known. Both formats mask anything that
looks like a phone number (``+34600111222``, ``whatsapp:+34...``) that a library logged
unmasked.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import uuid
from collections import OrderedDict
from datetime import datetime, timezone

from runtime.messages import InboundMessage, mask_phone

TURN: contextvars.ContextVar[str] = contextvars.ContextVar("habla_turn", default="")

Token = contextvars.Token


def turn_id(msg: InboundMessage) -> str:
    """The id of a message's turn: the same on every server and after a restart (a
    hash of the provider's message id, which may encode the sender's number)."""
    if not msg.message_id:
        return ""
    return hashlib.sha256(msg.key.encode()).hexdigest()[:12]


def start_turn(msg: InboundMessage) -> contextvars.Token[str]:
    """Set the turn id for what runs from here (undo with :func:`end_turn`). A message
    without a provider id keeps the id its webhook set, else gets a new one."""
    return TURN.set(turn_id(msg) or TURN.get() or uuid.uuid4().hex[:12])


def end_turn(token: contextvars.Token[str]) -> None:
    try:
        TURN.reset(token)
    except ValueError:  # (reset from another context: nothing to undo there)
        pass


def use_turn(turn: str) -> None:
    """Set a known turn id (an engine worker, from the server's request)."""
    TURN.set(turn)


def current_turn() -> str:
    return TURN.get()


_SENT: OrderedDict[str, str] = OrderedDict()
_SENT_MAX = 10_000


def remember_delivery(provider_id: str) -> None:
    """A reply went out under the current turn: its status callbacks log that turn."""
    turn = TURN.get()
    if provider_id and turn:
        _SENT[provider_id] = turn
        _SENT.move_to_end(provider_id)
        while len(_SENT) > _SENT_MAX:
            _SENT.popitem(last=False)


def turn_of_delivery(provider_id: str) -> str:
    """The turn that sent a provider message (empty: not sent by this process)."""
    return _SENT.get(provider_id, "")


# ---------------------------------------------------------------- formats

_PHONE = re.compile(r"(?<![\w*+])(?:whatsapp:|tel:|sms:)?\+\d[\d ]{6,17}\d(?!\d)")


def redact(text: str) -> str:
    """Mask phone numbers in international format (with their ``whatsapp:`` prefix)."""
    if "+" not in text:
        return text
    return _PHONE.sub(lambda m: mask_phone(m.group(0).replace(" ", "")), text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s:%(turn)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        turn = TURN.get()
        record.turn = f" [{turn}]" if turn else ""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, turn."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        turn = TURN.get()
        if turn:
            line["turn"] = turn
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = redact(record.exc_text)
        return json.dumps(line, ensure_ascii=False)


FORMATS = ("text", "json")


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``HABLA_LOG_FORMAT`` (text or json)."""
    return JsonFormatter() if kind == "json" else TextFormatter()
