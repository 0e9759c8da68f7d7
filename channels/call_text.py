"""What a call says and does with a turn's replies, in both call modes: the text to
speak (buttons read as keypad choices), and the end of the call a reply asks for."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.messages import BotReply, Delivery, InboundMessage
from runtime.output import OutputChannel

PRESS = {
    "en": "For {title}, press {number}.",
    "es": "Para {title}, pulse {number}.",
    "pt": "Para {title}, pressione {number}.",
    "fr": "Pour {title}, tapez {number}.",
    "de": "Für {title} drücken Sie die {number}.",
    "it": "Per {title}, premi {number}.",
}


class CallOutput(OutputChannel):
    """A turn's replies are said in the webhook's answer: nothing is sent here."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid

    def numbers_choices(self, reply: BotReply) -> bool:
        return bool(reply.buttons)  # read as "press 1 for ...": a digit maps back

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        return [Delivery(ok=True, provider_id=self.call_sid)]


def spoken(reply: BotReply, language: str, press: str = "") -> str:
    """What the caller hears for one reply: its text, then its buttons as keypad choices."""
    template = press or PRESS.get(language) or PRESS["en"]
    parts = [reply.text.strip()] if reply.text.strip() else []
    for number, button in enumerate(reply.buttons, 1):
        parts.append(template.format(title=button.title, number=number))
    return " ".join(parts)


def call_action(replies: Sequence[BotReply]) -> str:
    """ "hangup", "transfer" or "" from the replies' ``custom: {call: ...}``."""
    for reply in replies:
        call = (reply.custom or {}).get("call")
        if call in ("hangup", "transfer"):
            return str(call)
    return ""
