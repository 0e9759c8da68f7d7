"""One turn: a short list of stages run under the conversation's lock.

    answer   (understand and answer: text in, replies in the user's language out)
             acknowledge ─► transcribe ─► resolve a numbered choice ─► language
             ─► reply mode ─► translate for NLU ─► Rasa ─► localize the replies
    deliver  (the channel's edge)
             speak (voice note) ─► send and record

The stage lists are built by the composition root (``habla/wiring.py``
``build_turn``); every stage takes the turn's typed context and returns it.

What a turn promises:

* **Retried when it can succeed.** A transient failure inside a stage (an engine
  worker died, the lock timed out, a store or provider briefly down: any
  :class:`~runtime.errors.HablaError` with ``transient``) retries that stage with
  backoff, up to ``attempts`` times.
* **Never silent.** When it finally fails, the user gets the error reply
  (``utter_error`` in their language, from the domain), and the message is settled
  as failed.
* **Safe to cancel.** A cancelled turn (the server stops) leaves its message pending,
  to be resumed on the next start or by another server. A resumed message is never
  run through the dialogue twice: if its answer was stored, only the replies not yet
  delivered are sent; if Rasa had taken it in, the engine returns that answer from the
  conversation (``nlu/engine.py``).
* **Replies are durable.** The answer is stored with the message before it is sent,
  and progress after each reply; a provider that is down delays the rest (retried with
  backoff by whichever server claims the message) instead of dropping it, and a
  conversation's later answers wait behind an earlier one, in order.
* **Once across servers, in order.** Under the lock the turn first checks that the
  message is still pending: a server that lost it (its lease ran out and another server
  claimed and answered it) does not answer it again. It also waits until no message of
  the conversation accepted before it is still waiting for its turn, so two servers
  answer a burst in the order it arrived.

A phone call runs :meth:`Turn.answer` once per utterance under the lock and streams
the replies itself, cancelling its delivery when the caller speaks over it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from runtime import logs, metrics
from runtime.coordination import Answer, Choices, ConversationLocks, Inbox
from runtime.deliveries import DeliveryLog
from runtime.errors import HablaError, classify
from runtime.messages import BotReply, Button, Delivery, InboundMessage, mask_phone
from runtime.output import OutputChannel
from runtime.retry import backoff_delay
from runtime.text import strip_accents

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceIn:
    """A voice note the user sent, as the Transcribe stage understood it."""

    kind: str = "audio"
    transcript: str = ""
    language: str = ""
    language_confidence: float = 0.0
    confidence: float = 0.0
    duration_s: float = 0.0
    engine: str = ""
    content_type: str = ""
    bytes: int = 0
    error: str = ""

    def record(self) -> dict[str, Any]:
        """What is stored with the message (the operator API shows it)."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("content_type", "bytes", "duration_s", "transcript", "language"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.transcript or self.language:
            out["language_confidence"] = round(self.language_confidence, 3)
            out["confidence"] = round(self.confidence, 3)
        if self.engine:
            out["engine"] = self.engine
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class VoiceOut:
    """The voice note made for this turn's replies."""

    engine: str
    voice: str


@dataclass(frozen=True)
class TurnContext:
    """Everything a turn knows, typed. Stages return a copy with their part filled."""

    inbound: InboundMessage
    output: OutputChannel
    language: str = ""
    voice_in: VoiceIn | None = None
    voice_out: VoiceOut | None = None
    replies: tuple[BotReply, ...] = ()
    deliveries: tuple[Delivery, ...] = ()
    failed: bool = False
    """The turn could not be answered; ``replies`` is the error reply."""
    progress: Answer | None = None
    """A resumed message's stored answer: its replies and how many were delivered."""


class Stage(Protocol):
    async def __call__(self, ctx: TurnContext) -> TurnContext: ...


# ---------------------------------------------------------------- choices

_NUMBER = re.compile(r"^\s*(?:n(?:o|º|°|umber|umero|úmero)\.?\s*)?(\d{1,2})\s*[.)]?\s*$", re.I)
# spoken (transcribed) or written numbers of a choice, in the bot's common languages
_WORDS = {
    1: "one first uno una primero primera primer um uma primeiro un une premier premiere eins",
    2: "two second dos segundo segunda dois duas deux deuxieme zwei zweite due",
    3: "three third tres tercero tercera tercer tres terceiro terceira trois troisieme drei dritte",
    4: "four fourth cuatro cuarto cuarta quatro quarto quarta quatre quatrieme vier vierte",
    5: "five fifth cinco quinto quinta cinq cinquieme funf fuenf funfte",
    6: "six sixth seis sexto sexta sechs sechste sei",
    7: "seven seventh siete septimo septima sete setimo setima sept septieme sieben sette",
    8: "eight eighth ocho octavo octava oito oitavo oitava huit huitieme acht otto",
    9: "nine ninth nueve noveno novena nove nono nona neuf neuvieme neun",
    10: "ten tenth diez decimo decima dez dix dixieme zehn dieci",
}
NUMBER_WORDS = {w: n for n, words in _WORDS.items() for w in words.split()}
_FILLER = set(
    "the el la o a le der die das il number numero option opcion opcao please por favor".split()
)


def choice_index(text: str) -> int | None:
    """The 1-based choice a short reply names: "2", "2.", "two", "Dos.", "the second one"."""
    m = _NUMBER.match(text)
    if m:
        return int(m.group(1))
    words = re.findall(r"[a-z]+", strip_accents(text.casefold()))
    if not words or len(words) > 4:
        return None
    numbers = [NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS]
    rest = [w for w in words if w not in NUMBER_WORDS and w not in _FILLER]
    if rest or not numbers:
        return None
    # "the second one": the ordinal wins over the filler "one"
    named = [n for n in numbers if n != 1] or numbers
    return named[0] if len(set(named)) == 1 else None


def match_choice(text: str, offered: Sequence[Button]) -> Button | None:
    """The button a text reply means: its number ("2", "two", "la segunda") or title."""
    if not offered or not text:
        return None
    index = choice_index(text)
    if index is not None:
        return offered[index - 1] if 1 <= index <= len(offered) else None
    wanted = strip_accents(text.strip().rstrip(".!").casefold())
    return next((b for b in offered if strip_accents(b.title.strip().casefold()) == wanted), None)


class ResolveChoice:
    """On channels that show buttons as numbered text, map "2" (typed or spoken, so it
    runs after transcription) back to that button's payload."""

    def __init__(self, choices: Choices) -> None:
        self.choices = choices

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        if msg.button_payload or not msg.text or len(msg.text) > 40 or msg.text.startswith("/"):
            return ctx
        button = match_choice(msg.text, await self.choices.recall(msg.conversation_id))
        if button is None:
            return ctx
        return replace(ctx, inbound=replace(msg, button_payload=button.payload))


# ---------------------------------------------------------------- core stages


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


class Engine(Protocol):
    async def handle(self, msg: InboundMessage) -> list[BotReply]: ...


class Dialogue:
    """Rasa: NLU, dialogue policies, forms and custom actions."""

    commits: ClassVar[bool] = True  # the message is in the conversation's state afterwards

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        return replace(ctx, replies=tuple(await self.engine.handle(ctx.inbound)))


@dataclass(frozen=True)
class DeliveryPolicy:
    """How long replies wait for a provider that is down, and how often they are retried
    (every server's claim of expired leases picks them up)."""

    window_s: float = 3600.0
    backoff_s: float = 5.0
    max_delay_s: float = 300.0


class DeliveryDeferred(Exception):
    """The replies cannot be delivered now: the message stays pending with its answer
    stored and is claimed again in ``delay_s`` (by whichever server is alive)."""

    def __init__(self, answer: Answer, delay_s: float, why: str) -> None:
        super().__init__(why)
        self.answer, self.delay_s = answer, delay_s


class Deliver:
    """Send the replies on the conversation's channel, durably: the answer is stored
    with the message first, progress after each reply, and a provider that is down
    delays the rest (retried with backoff for ``policy.window_s``) instead of losing it.
    A conversation's replies go out in order: while an earlier answer waits, so do the
    later ones."""

    def __init__(
        self,
        log: DeliveryLog,
        choices: Choices,
        inbox: Inbox,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        self.log, self.choices, self.inbox = log, choices, inbox
        self.policy = policy or DeliveryPolicy()

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        answer = ctx.progress
        if answer is None:
            numbered = [r for r in ctx.replies if ctx.output.numbers_choices(r)]
            await self.choices.remember(
                msg.conversation_id, numbered[-1].buttons if numbered else ()
            )
            answer = Answer(ctx.replies)
            await self.inbox.save_answer(msg, answer)
        if await self.inbox.waiting_before(msg):
            raise DeliveryDeferred(answer, self.policy.backoff_s, "an earlier answer is waiting")
        deliveries: list[Delivery] = []
        for index in range(answer.sent, len(answer.replies)):
            reply = answer.replies[index]
            sent = await ctx.output.send(msg, reply)
            retry = [d for d in sent if not d.ok and d.transient]
            if retry and not self._given_up(answer):
                metrics.delivered(msg.channel, "deferred")
                raise self._deferral(answer, index, retry[0].error)
            # the reply is out: its progress first (one Redis write, so a crash now does
            # not send it again), then its record. From here a failing store must not
            # fail the stage, whose retry would send it again: the progress goes on here
            answer = replace(answer, sent=index + 1)
            await self._after_send(self.inbox.save_answer(msg, answer), "its progress", msg)
            for delivery in sent:
                await self._after_send(self._record(ctx, reply, delivery), "its record", msg)
            deliveries.extend(sent)
        return replace(ctx, deliveries=tuple(deliveries))

    @staticmethod
    async def _after_send(write: Awaitable[None], what: str, msg: InboundMessage) -> None:
        try:
            await write
        except Exception as e:
            error = classify(e)
            (logger.warning if error.transient else logger.exception)(
                "a reply to %s was sent, %s not stored (%s)",
                mask_phone(msg.conversation_id),
                what,
                error,
            )

    def _given_up(self, answer: Answer) -> bool:
        since = answer.failing_since
        return bool(since) and time.time() - since > self.policy.window_s

    def _deferral(self, answer: Answer, index: int, error: str) -> DeliveryDeferred:
        p = self.policy
        attempts = answer.attempts + 1
        waiting = replace(
            answer, sent=index, attempts=attempts, failing_since=answer.failing_since or time.time()
        )
        return DeliveryDeferred(waiting, backoff_delay(attempts, p.backoff_s, p.max_delay_s), error)

    async def send(self, ctx: TurnContext) -> list[Delivery]:
        """Send the replies once, now (the error reply of a failed turn)."""
        deliveries = []
        for reply in ctx.replies:
            for delivery in await ctx.output.send(ctx.inbound, reply):
                await self._record(ctx, reply, delivery)
                deliveries.append(delivery)
        return deliveries

    async def _record(self, ctx: TurnContext, reply: BotReply, delivery: Delivery) -> None:
        msg = ctx.inbound
        metrics.delivered(msg.channel, "sent" if delivery.ok else "failed")
        if delivery.ok:
            logs.remember_delivery(delivery.provider_id)
            # (not the provider's message id: a WhatsApp id encodes the recipient's number)
            logger.info("reply sent to %s on %s", mask_phone(msg.conversation_id), msg.channel)
        await self.log.record(msg.channel, msg.conversation_id, reply, delivery)
        if not delivery.ok:
            logger.error(
                "reply to %s not delivered after %d attempts: %s",
                mask_phone(ctx.inbound.conversation_id),
                delivery.attempts,
                delivery.error,
            )


# ---------------------------------------------------------------- the turn

ErrorReply = Callable[[TurnContext], Awaitable[tuple[BotReply, ...]]]


@dataclass(frozen=True)
class RetryPolicy:
    """A stage that fails transiently is tried ``attempts`` times with backoff; a
    webhook message (``patient`` turns) whose tries all failed then stays pending and is
    claimed again a lease later, for up to ``patience_s`` from its arrival, before the
    user gets the error reply."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_delay_s: float = 5.0
    patience_s: float = 0.0


@dataclass
class _Run:
    answered_elsewhere: bool = False  # another server finished it while this one waited
    deferred: DeliveryDeferred | None = None  # the replies wait for the provider
    failures: list[str] = field(default_factory=list)
    patient: bool = False  # a webhook message: its turn may wait for a store to return
    postponed: str = ""  # why the message was left pending, to be taken up again


async def _no_error_reply(ctx: TurnContext) -> tuple[BotReply, ...]:
    return ()


class Turn:
    def __init__(
        self,
        answer: Sequence[Stage],
        deliver: Sequence[Stage],
        locks: ConversationLocks,
        inbox: Inbox,
        *,
        retry: RetryPolicy | None = None,
        error_reply: ErrorReply = _no_error_reply,
        sender: Deliver | None = None,
    ) -> None:
        self.answer_stages, self.deliver_stages = list(answer), list(deliver)
        self.locks, self.inbox = locks, inbox
        self.retry = retry or RetryPolicy()
        self.error_reply = error_reply
        self.sender = sender or next((s for s in deliver if isinstance(s, Deliver)), None)
        # message key → (the message ahead of it in line, since when it has been first)
        self._in_line: dict[str, tuple[str, float]] = {}

    @property
    def stages(self) -> list[Stage]:
        return self.answer_stages + self.deliver_stages

    async def run(
        self, msg: InboundMessage, output: OutputChannel, *, patient: bool = False
    ) -> TurnContext:
        """The whole turn under the conversation's lock; the inbox is always settled,
        except for a ``patient`` turn (a webhook's, answered later) that a store or
        engine kept failing: its message stays pending, claimed again a lease later."""
        ctx = TurnContext(inbound=msg, output=output)
        state = _Run(patient=patient)
        status: str | None = "failed"
        outcome: str | None = "failed"
        began = time.perf_counter()
        token = logs.start_turn(msg)
        progress = metrics.TURNS_IN_PROGRESS.labels(msg.channel)
        progress.inc()
        try:
            ctx = await self._with_lock(ctx, state)
            status = None if state.postponed else "failed" if ctx.failed else "done"
            outcome = _outcome(ctx, state)
        except WaitInLine:
            status = outcome = None  # it runs again, after what is queued before it
            raise
        except asyncio.CancelledError:
            # the server stops: the message stays pending and is resumed (here after a
            # restart, or by another server); if the dialogue had already taken it in,
            # the resumed turn sends that answer instead of running it again
            status, outcome = None, "cancelled"
            raise
        finally:
            progress.dec()
            try:
                await self._settle(msg, state, status)
            finally:
                if outcome is not None:
                    metrics.turn_ended(msg.channel, outcome, time.perf_counter() - began)
                logs.end_turn(token)
        return ctx

    async def _settle(self, msg: InboundMessage, state: _Run, status: str | None) -> None:
        """Record how the message ended, tried again for a few seconds if its store is
        briefly down (a message left pending is claimed again after its lease, and its
        last reply, sent but not recorded, would go twice). If the store stays down, it
        stays pending."""
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                if state.deferred is not None:
                    await asyncio.shield(self._defer(msg, state.deferred))
                elif status is not None and not state.answered_elsewhere:
                    await asyncio.shield(self.inbox.done(msg, status))
                return
            except Exception as e:
                if not classify(e).transient:
                    raise
                if attempt + 1 < SETTLE_ATTEMPTS:
                    await asyncio.sleep(0.2 * 2**attempt)  # backoff: 0.2 s, doubling
                    continue
                logger.warning(
                    "message %s of %s not settled (%s): claimed again after its lease",
                    msg.message_id,
                    mask_phone(msg.conversation_id),
                    e,
                )

    async def _defer(self, msg: InboundMessage, deferred: DeliveryDeferred) -> None:
        answer = deferred.answer
        logger.warning(
            "replies to %s wait for the provider (%s): %d of %d sent, next try in %.0f s",
            mask_phone(msg.conversation_id),
            deferred,
            answer.sent,
            len(answer.replies),
            deferred.delay_s,
        )
        await self.inbox.defer(msg, answer, deferred.delay_s)

    async def _with_lock(self, ctx: TurnContext, state: _Run) -> TurnContext:
        msg = ctx.inbound
        attempt = 1
        while True:
            try:
                async with self.locks.lock(msg.conversation_id) as held:
                    if not await self.inbox.is_pending(msg):
                        # its lease ran out while this server waited, and another server
                        # claimed and answered it: answering again would be a duplicate
                        logger.warning("message %s was answered by another server", msg.message_id)
                        state.answered_elsewhere = True
                        self._in_line.pop(msg.key, None)
                        return ctx
                    stored = await self.inbox.answer_of(msg) if msg.resumed else None
                    if stored is not None and self.sender is not None:
                        # its turn ran before: only what was not delivered is sent
                        ctx = replace(ctx, replies=stored.replies, progress=stored)
                        return await self._stage(self.sender, ctx, state)
                    ahead = await self.inbox.ahead_in_line(msg)
                    if ahead is not None:
                        # an earlier message of this conversation (on another server, or
                        # one a dead server left to be claimed) goes first; only one that
                        # stays first for four leases (a bug, not a backlog) is passed
                        blocker, since = self._in_line.get(msg.key, ("", 0.0))
                        if blocker != ahead:
                            blocker, since = ahead, time.monotonic()
                            self._in_line[msg.key] = (blocker, since)
                        if time.monotonic() - since < 4 * self.inbox.lease_s:
                            raise WaitInLine(msg.key)
                        logger.warning(
                            "message %s: %s, ahead of it in %s, is still not answered; going on",
                            msg.message_id,
                            ahead,
                            mask_phone(msg.conversation_id),
                        )
                    self._in_line.pop(msg.key, None)
                    ctx = await self._stages(self.answer_stages, ctx, state)
                    if not await held.still_held():
                        # the lock expired while this server stalled: another server may
                        # be running the message; it stays pending for whoever has it
                        state.postponed = "the conversation's lock expired during the turn"
                        logger.warning(
                            "turn for %s lost its lock before sending: left to the leases",
                            mask_phone(msg.conversation_id),
                        )
                        return ctx
                    return await self._stages(self.deliver_stages, ctx, state)
            except WaitInLine:
                raise
            except DeliveryDeferred as e:
                state.deferred = e
                return ctx
            except asyncio.CancelledError:
                raise
            except _StageFailed as e:
                ctx = e.ctx
                if e.transient and self._postpone(msg, state, e.reason):
                    return ctx
                break
            except Exception as e:  # the lock: not acquired in time, or its store is down
                error = classify(e)
                last = attempt == self.retry.attempts
                if error.transient and last and self._postpone(msg, state, str(error)):
                    return ctx
                if not error.transient or last:
                    state.failures.append(str(error))
                    logger.exception(
                        "turn failed for %s on %s", mask_phone(msg.conversation_id), msg.channel
                    )
                    break
                await self._backoff(attempt, error, msg)
                attempt += 1
        return await self._fail(ctx)

    def _postpone(self, msg: InboundMessage, state: _Run, why: str) -> bool:
        """Leave a webhook message pending after its tries, while it is younger than the
        patience: its lease runs out and a server (this or another) takes it up again."""
        age = time.time() - msg.received_at
        if not (state.patient and msg.message_id and age < self.retry.patience_s):
            return False
        state.postponed = why
        logger.warning(
            "turn for %s postponed (%s): the message stays pending, tried again after its "
            "lease (%.0f s of %.0f s patience used)",
            mask_phone(msg.conversation_id),
            why,
            age,
            self.retry.patience_s,
        )
        return True

    async def answer(self, msg: InboundMessage, output: OutputChannel) -> TurnContext:
        """Understand and answer one message under the conversation's lock, without
        delivering (a phone call streams the replies itself). The inbox is not touched."""
        ctx = TurnContext(inbound=msg, output=output)
        began = time.perf_counter()
        token = logs.start_turn(msg)
        outcome = "failed"
        try:
            async with self.locks.lock(msg.conversation_id):
                ctx = await self._stages(self.answer_stages, ctx, _Run())
                outcome = "answered"
                return ctx
        except _StageFailed as e:
            ctx = e.ctx
        except asyncio.CancelledError:
            outcome = "cancelled"  # the caller spoke over it, or hung up
            raise
        except Exception:
            logger.exception("answer failed for %s", mask_phone(msg.conversation_id))
        finally:
            metrics.turn_ended(msg.channel, outcome, time.perf_counter() - began)
            logs.end_turn(token)
        return replace(ctx, failed=True, replies=await self._error_replies(ctx))

    async def _stages(self, stages: list[Stage], ctx: TurnContext, state: _Run) -> TurnContext:
        for stage in stages:
            ctx = await self._stage(stage, ctx, state)
        return ctx

    async def _stage(self, stage: Stage, ctx: TurnContext, state: _Run) -> TurnContext:
        """One stage, timed once here for every stage (``habla_turn_stage_duration_seconds``)."""
        with metrics.stage_timer(type(stage).__name__):
            return await self._attempts(stage, ctx)

    async def _attempts(self, stage: Stage, ctx: TurnContext) -> TurnContext:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await stage(ctx)
            except (asyncio.CancelledError, DeliveryDeferred):
                raise
            except Exception as e:
                error = classify(e)
                if not error.transient or attempt == self.retry.attempts:
                    (logger.warning if error.transient else logger.error)(
                        "turn for %s: %s failed (%s)",
                        mask_phone(ctx.inbound.conversation_id),
                        type(stage).__name__,
                        error,
                        exc_info=not (error.transient or isinstance(e, HablaError)),
                    )
                    raise _StageFailed(ctx, error.transient, str(error)) from e
                await self._backoff(attempt, error, ctx.inbound, type(stage).__name__)
                if getattr(stage, "commits", False):
                    # the failed attempt may have been saved before it failed (a store's
                    # answer timed out): the engine looks for the message before running it
                    ctx = replace(ctx, inbound=replace(ctx.inbound, resumed=True))
        raise AssertionError("unreachable")

    async def _backoff(
        self, attempt: int, error: HablaError, msg: InboundMessage, where: str = "lock"
    ) -> None:
        r = self.retry
        delay = backoff_delay(attempt, r.backoff_s, r.max_delay_s, error.retry_after)
        logger.warning(
            "turn for %s: %s failed (%s); attempt %d of %d in %.1f s",
            mask_phone(msg.conversation_id),
            where,
            error,
            attempt + 1,
            r.attempts,
            delay,
        )
        await asyncio.sleep(delay)

    async def _error_replies(self, ctx: TurnContext) -> tuple[BotReply, ...]:
        try:
            return await self.error_reply(ctx)
        except Exception:
            logger.exception("the error reply could not be made")
            return ()

    async def _fail(self, ctx: TurnContext) -> TurnContext:
        """The user hears that the turn failed (never silence)."""
        replies = await self._error_replies(ctx)
        ctx = replace(ctx, failed=True, replies=replies)
        if replies and self.sender is not None:
            try:
                ctx = replace(ctx, deliveries=tuple(await self.sender.send(ctx)))
            except Exception:
                logger.exception(
                    "the error reply to %s was not sent", mask_phone(ctx.inbound.conversation_id)
                )
        return ctx


def _outcome(ctx: TurnContext, state: _Run) -> str:
    """How a turn ended, for ``habla_turns_total``."""
    if state.answered_elsewhere:
        return "elsewhere"
    if state.deferred is not None:
        return "deferred"
    if state.postponed:
        return "postponed"
    return "failed" if ctx.failed else "answered"


SETTLE_ATTEMPTS = 6
"""Tries to record a finished turn (about 6 s in all) before it is left to the leases."""
LINE_POLL_S = 0.05
"""How often a message waiting behind an earlier one of its conversation looks again."""


class WaitInLine(Exception):
    """An earlier message of the conversation has not had its turn yet: the message stays
    pending and the caller runs it again shortly, after what is queued before it (so a
    server's own queue is never blocked by a message waiting for another server)."""


class _StageFailed(Exception):
    """A stage failed for good; carries the context as it was before that stage."""

    def __init__(self, ctx: TurnContext, transient: bool = False, reason: str = "") -> None:
        super().__init__("stage failed")
        self.ctx, self.transient, self.reason = ctx, transient, reason
