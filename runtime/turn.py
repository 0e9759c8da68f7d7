"""One turn: a short list of stages run under the conversation's lock.

    inbound ─► acknowledge (read receipt) ─► resolve a numbered/titled choice
            ─► Rasa (NLU, dialogue, actions)
            ─► deliver on the channel (retrying transient failures) ─► record

Later stages (media download, speech-to-text, language, translation) slot into the
list; each takes the turn's context and returns it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from runtime.coordination import Choices, ConversationLocks, Inbox
from runtime.deliveries import DeliveryLog
from runtime.messages import BotReply, Button, Delivery, InboundMessage, mask_phone

if TYPE_CHECKING:
    from channels.base import OutputChannel
    from nlu.engine import Engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnContext:
    inbound: InboundMessage
    output: OutputChannel
    replies: tuple[BotReply, ...] = ()
    language: str = ""
    deliveries: tuple[Delivery, ...] = ()
    notes: dict[str, object] = field(default_factory=dict)


class Stage(Protocol):
    async def __call__(self, ctx: TurnContext) -> TurnContext: ...


_NUMBER = re.compile(r"^\s*(\d{1,2})\s*[.)]?\s*$")


def match_choice(text: str, offered: Sequence[Button]) -> Button | None:
    """The button a text reply means: its number ("2", "2.") or its title."""
    if not offered or not text:
        return None
    m = _NUMBER.match(text)
    if m:
        index = int(m.group(1)) - 1
        return offered[index] if 0 <= index < len(offered) else None
    wanted = text.strip().casefold()
    return next((b for b in offered if b.title.strip().casefold() == wanted), None)


class ResolveChoice:
    """On channels that show buttons as numbered text, map "2" back to a payload."""

    def __init__(self, choices: Choices) -> None:
        self.choices = choices

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        if msg.button_payload or not msg.text or len(msg.text) > 40:
            return ctx
        button = match_choice(msg.text, await self.choices.recall(msg.conversation_id))
        if button is None:
            return ctx
        return replace(ctx, inbound=replace(msg, button_payload=button.payload))


class Acknowledge:
    """Read receipts where the channel has them (best effort: never fails a turn)."""

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        if ctx.inbound.is_system:
            return ctx
        try:
            await ctx.output.acknowledge(ctx.inbound)
        except Exception as e:
            logger.info("could not acknowledge %s: %s", ctx.inbound.message_id, e)
        return ctx


class Dialogue:
    """Rasa: NLU, dialogue policies, forms and custom actions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        return replace(ctx, replies=tuple(await self.engine.handle(ctx.inbound)))


class Deliver:
    """Send the replies on the conversation's channel and record the outcome."""

    def __init__(self, log: DeliveryLog, choices: Choices) -> None:
        self.log, self.choices = log, choices

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        numbered = [r for r in ctx.replies if ctx.output.numbers_choices(r)]
        await self.choices.remember(
            ctx.inbound.conversation_id, numbered[-1].buttons if numbered else ()
        )
        deliveries = []
        for reply in ctx.replies:
            for delivery in await ctx.output.send(ctx.inbound, reply):
                await self.log.record(
                    ctx.inbound.channel, ctx.inbound.conversation_id, reply, delivery
                )
                if not delivery.ok:
                    logger.error(
                        "reply to %s not delivered after %d attempts: %s",
                        mask_phone(ctx.inbound.conversation_id),
                        delivery.attempts,
                        delivery.error,
                    )
                deliveries.append(delivery)
        return replace(ctx, deliveries=tuple(deliveries))


class Turn:
    def __init__(self, stages: Sequence[Stage], locks: ConversationLocks, inbox: Inbox) -> None:
        self.stages, self.locks, self.inbox = list(stages), locks, inbox

    async def run(self, msg: InboundMessage, output: OutputChannel) -> TurnContext:
        ctx = TurnContext(inbound=msg, output=output)
        status = "done"
        try:
            async with self.locks.lock(msg.conversation_id):
                for stage in self.stages:
                    ctx = await stage(ctx)
        except Exception:
            status = "failed"
            logger.exception(
                "turn failed for %s on %s", mask_phone(msg.conversation_id), msg.channel
            )
        await self.inbox.done(msg, status)
        return ctx
