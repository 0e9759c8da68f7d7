"""The turn: retried when a failure is transient, never silent when it fails for good,
safe to cancel (the inbox is always settled), and a spoken choice picks a button."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from runtime.coordination import InProcessLocks, LockTimeout, SQLiteChoices, SQLiteInbox
from runtime.deliveries import SQLiteDeliveryLog
from runtime.errors import PermanentError, TransientError, classify, error_for_status
from runtime.messages import BotReply, Button, Delivery, InboundMessage
from runtime.output import OutputChannel
from runtime.settings import Settings
from runtime.sqlite import SQLite
from runtime.turn import (
    Deliver,
    DeliveryPolicy,
    Dialogue,
    RetryPolicy,
    Turn,
    TurnContext,
    WaitInLine,
    match_choice,
)
from tests.conftest import ServerFactory, base_env, post_twilio, whatsapp_form
from tests.fakes.twilio_api import FakeTwilioAPI
from voice.audio import pcm_to_ogg_opus
from voice.stt.base import SpeechToText, Transcript

FAST = RetryPolicy(attempts=3, backoff_s=0.0)


class Collect(OutputChannel):
    def __init__(self) -> None:
        self.sent: list[BotReply] = []

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.sent.append(reply)
        return [Delivery(ok=True, provider_id=f"m{len(self.sent)}")]


class Engine:
    """A dialogue engine that fails as scripted, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.entered = asyncio.Event()
        self.hold: asyncio.Event | None = None

    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        self.calls += 1
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.failures:
            raise self.failures.pop(0)
        return [BotReply(text=f"you said {msg.text}")]


class Gate:
    """A stage before the dialogue that waits until released (to cancel in it)."""

    def __init__(self) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        self.entered.set()
        await self.release.wait()
        return ctx


async def error_reply(ctx: TurnContext) -> tuple[BotReply, ...]:
    return (BotReply(text=f"sorry ({ctx.language or 'en'})"),)


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    db = SQLite(tmp_path / "t.sqlite3")
    yield db
    await db.close()


async def make_turn(
    db: SQLite,
    engine: Engine,
    *before: Any,
    locks: Any = None,
    policy: DeliveryPolicy | None = None,
) -> Any:
    inbox, choices, log = SQLiteInbox(db, 86400), SQLiteChoices(db), SQLiteDeliveryLog(db)
    for store in (inbox, choices, log):
        await store.setup()
    turn = Turn(
        [*before, Dialogue(engine)],
        [Deliver(log, choices, inbox, policy)],
        locks or InProcessLocks(),
        inbox,
        retry=FAST,
        error_reply=error_reply,
    )
    return turn, inbox


def message(text: str = "hola", mid: str = "SM1") -> InboundMessage:
    return InboundMessage(channel="t", conversation_id="+34600111222", message_id=mid, text=text)


async def test_a_transient_failure_is_retried_and_answered_once(db: SQLite) -> None:
    engine = Engine(TransientError("engine worker exited"))
    turn, inbox = await make_turn(db, engine)
    out, msg = Collect(), message()
    assert await inbox.accept(msg)
    ctx = await turn.run(msg, out)
    assert engine.calls == 2 and not ctx.failed
    assert [r.text for r in out.sent] == ["you said hola"]
    assert await inbox.claim(all_pending=True) == []


class Flaky(OutputChannel):
    """A provider that answers 503 to the next ``down`` messages, then delivers."""

    def __init__(self, down: int = 0) -> None:
        self.down, self.tries = down, 0
        self.sent: list[BotReply] = []

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.tries += 1
        if self.down:
            self.down -= 1
            return [Delivery(ok=False, error="twilio 503", attempts=5, transient=True)]
        self.sent.append(reply)
        return [Delivery(ok=True, provider_id=f"m{len(self.sent)}")]


class TwoReplies(Engine):
    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        self.calls += 1
        return [BotReply(text=f"{msg.text} 1"), BotReply(text=f"{msg.text} 2")]


async def resume(inbox: SQLiteInbox) -> list[InboundMessage]:
    """What a server's claim of expired leases hands to a turn (leases over now)."""
    await inbox.db.execute("UPDATE inbox SET lease_until = 0 WHERE status = 'pending'")
    return [replace(m, resumed=True) for m in await inbox.claim()]


class SecondFailsOnce(Flaky):
    """Delivers the first reply; 503 on the first try of the second."""

    failed = False

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        if reply.text.endswith("2") and not self.failed:
            self.failed = True
            return [Delivery(ok=False, error="twilio 503", attempts=5, transient=True)]
        return await super().send(msg, reply)


async def test_replies_wait_for_a_provider_that_is_down_and_go_once(db: SQLite) -> None:
    engine = TwoReplies()
    turn, inbox = await make_turn(db, engine, policy=DeliveryPolicy(3600, 5.0, 300))
    msg = message("hola")
    await inbox.accept(msg)
    out = SecondFailsOnce()
    ctx = await turn.run(msg, out)
    assert [r.text for r in out.sent] == ["hola 1"] and not ctx.failed
    [row] = await db.fetchall("SELECT status, waiting, lease_until FROM inbox")
    assert row[0] == "pending" and row[1] == 1 and row[2] > 0  # stored, waits, not lost
    assert await inbox.claim() == []  # nobody takes it before its retry is due

    [again] = await resume(inbox)  # the retry is due: any server claims it
    await turn.run(again, out)
    assert [r.text for r in out.sent] == ["hola 1", "hola 2"]  # only what was left
    assert engine.calls == 1  # the dialogue is not run again for a retry
    assert await inbox.claim(all_pending=True) == []


async def test_a_later_answer_waits_behind_an_earlier_one(db: SQLite) -> None:
    engine = Engine()
    turn, inbox = await make_turn(db, engine, policy=DeliveryPolicy(3600, 5.0, 300))
    first, second = message("uno", "SM1"), message("dos", "SM2")
    second = replace(second, received_at=first.received_at + 1)
    await inbox.accept(first)
    await inbox.accept(second)
    down = Flaky(down=1)
    await turn.run(first, down)  # the provider is down: "uno" waits
    up = Flaky()
    await turn.run(second, up)  # the provider is back, but "dos" must not overtake
    assert up.sent == [] and engine.calls == 2
    for msg in sorted(await resume(inbox), key=lambda m: m.received_at):
        await turn.run(msg, up)
    assert [r.text for r in up.sent] == ["you said uno", "you said dos"]
    assert engine.calls == 2
    assert await inbox.claim(all_pending=True) == []


async def test_a_message_waits_in_line_behind_an_earlier_one(db: SQLite) -> None:
    """Another server still has the conversation's earlier message: the later one is
    not answered first, and stays pending for its server to run again."""
    engine = Engine()
    turn, inbox = await make_turn(db, engine)
    first, second = message("uno", "SM1"), message("dos", "SM2")
    await inbox.accept(first)
    await inbox.accept(second)
    out = Collect()
    with pytest.raises(WaitInLine):
        await turn.run(second, out)
    assert engine.calls == 0 and await inbox.is_pending(second)
    await turn.run(first, out)
    await turn.run(second, out)
    assert [r.text for r in out.sent] == ["you said uno", "you said dos"]


async def test_replies_are_given_up_after_the_window(db: SQLite) -> None:
    engine = Engine()
    turn, inbox = await make_turn(db, engine, policy=DeliveryPolicy(0.0, 5.0, 300))
    msg = message("hola")
    await inbox.accept(msg)
    out = Flaky(down=10)
    await turn.run(msg, out)  # first failure: stored, retried later
    assert out.tries == 1 and await inbox.is_pending(msg)
    [again] = await resume(inbox)
    await turn.run(again, out)  # the window (0 s here) is over: recorded as failed
    assert not await inbox.is_pending(msg)
    [status] = await db.fetchall("SELECT status FROM outbound")
    assert status == ("failed",)


async def test_a_resumed_message_the_dialogue_already_took_is_not_run_again(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    """The server died after Rasa saved the turn and before its replies were stored:
    on resume the answer comes from the conversation, not from a second run."""
    data = tmp_path / "data"
    _, runtime = await make_server(env=base_env(data, twilio_api.url), data_dir=data)
    form = whatsapp_form("when are you open?", "+447700900125")
    msg = InboundMessage(
        channel="twilio",
        conversation_id="+447700900125",
        message_id=form["MessageSid"],
        text=form["Body"],
        sender="+447700900125",
        reply_to="whatsapp:+447700900125",
        reply_from=form["To"],
    )
    replies = await runtime.engine.handle(msg)  # type: ignore[union-attr]  # then the "crash"
    assert "Monday" in replies[0].text
    await runtime.inbox.accept(msg)
    [claimed] = await resume(runtime.inbox)  # type: ignore[arg-type]
    before = len((await runtime.engine.tracker_store.retrieve(msg.conversation_id)).events)  # type: ignore[union-attr]
    await runtime.turn.run(claimed, runtime.channels["twilio"].output)  # type: ignore[arg-type]
    after = len((await runtime.engine.tracker_store.retrieve(msg.conversation_id)).events)  # type: ignore[union-attr]
    assert after == before  # no second user message, no second answer in the state
    [sent] = twilio_api.to("whatsapp:+447700900125")
    assert "Monday" in sent.body


async def test_a_turn_that_fails_for_good_tells_the_user(db: SQLite) -> None:
    # before: any exception left the user with no answer at all
    engine = Engine(*(TransientError("down") for _ in range(3)))
    turn, inbox = await make_turn(db, engine)
    out, msg = Collect(), message()
    await inbox.accept(msg)
    ctx = await turn.run(msg, out)
    assert engine.calls == 3 and ctx.failed
    assert [r.text for r in out.sent] == ["sorry (en)"]
    row = await db.fetchall("SELECT status FROM inbox WHERE message_id = ?", ("SM1",))
    assert row == [("failed",)]

    engine = Engine(PermanentError("bad request"))  # permanent: not retried
    turn, inbox = await make_turn(db, engine)
    out = Collect()
    ctx = await turn.run(message(mid="SM2"), out)
    assert engine.calls == 1 and [r.text for r in out.sent] == ["sorry (en)"]


async def test_a_webhook_turn_waits_for_a_store_to_return_then_answers_once(
    db: SQLite,
) -> None:
    """A store down longer than the tries: a webhook's message stays pending (no error
    reply) and is claimed again after its lease; once the store is back, one answer. The
    patience runs from the message's arrival; after it, the user hears the error."""
    engine = Engine(*(TransientError("mongo: ServerSelectionTimeoutError") for _ in range(4)))
    turn, _ = await make_turn(db, engine)
    turn.retry = RetryPolicy(attempts=3, backoff_s=0.0, patience_s=300)
    inbox = turn.inbox
    inbox.lease_s = 0.0  # claimable as soon as it is left
    out, msg = Collect(), message()
    assert await inbox.accept(msg)
    ctx = await turn.run(msg, out, patient=True)
    assert engine.calls == 3 and out.sent == [] and not ctx.failed
    assert await inbox.is_pending(msg)
    (again,) = await inbox.claim()
    assert again.key == msg.key
    ctx = await turn.run(replace(again, resumed=True), out, patient=True)
    assert engine.calls == 5 and [r.text for r in out.sent] == ["you said hola"]
    assert not await inbox.is_pending(msg) and await inbox.claim(all_pending=True) == []

    # the same failures, on a message older than the patience: the error reply, once
    engine.failures = [TransientError("down") for _ in range(3)]
    old = replace(message(mid="SM2"), received_at=time.time() - 301)
    await inbox.accept(old)
    ctx = await turn.run(old, out, patient=True)
    assert ctx.failed and [r.text for r in out.sent][-1] == "sorry (en)"
    assert not await inbox.is_pending(old)

    # a caller waiting on the line (REST, calls) is never kept waiting
    engine.failures = [TransientError("down") for _ in range(3)]
    ctx = await turn.run(message(mid="SM3"), out)
    assert ctx.failed and len(out.sent) == 3


async def test_a_store_failing_after_a_reply_went_out_does_not_send_it_again(
    db: SQLite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB (the delivery log) or Redis (the progress) down right after a reply was
    sent: retrying the stage would send it twice; the turn goes on and ends once."""
    engine = Engine()
    engine.handle = lambda msg: _two_replies()  # type: ignore[method-assign]
    turn, inbox = await make_turn(db, engine)
    deliver = turn.sender
    calls = {"record": 0, "save": 0}

    async def record_down(*args: Any) -> None:
        calls["record"] += 1
        raise TransientError("mongo: ServerSelectionTimeoutError")

    real_save = inbox.save_answer

    async def progress_down(msg: InboundMessage, answer: Any) -> None:
        calls["save"] += 1
        if answer.sent:  # the progress after the first reply
            raise TransientError("ConnectionError: Connection closed by server")
        await real_save(msg, answer)

    monkeypatch.setattr(deliver.log, "record", record_down)
    monkeypatch.setattr(inbox, "save_answer", progress_down)
    out, msg = Collect(), message()
    await inbox.accept(msg)
    ctx = await turn.run(msg, out)
    assert [r.text for r in out.sent] == ["uno", "dos"] and not ctx.failed
    assert calls == {"record": 2, "save": 3}  # the answer, then the progress after each
    assert not await inbox.is_pending(msg)


async def _two_replies() -> list[BotReply]:
    return [BotReply(text="uno"), BotReply(text="dos")]


async def test_a_lock_that_times_out_is_retried(db: SQLite) -> None:
    class FlakyLocks(InProcessLocks):
        failures = 1

        def lock(self, conversation_id: str) -> Any:
            if self.failures:
                self.failures -= 1
                raise LockTimeout("held elsewhere")
            return super().lock(conversation_id)

    engine = Engine()
    turn, _ = await make_turn(db, engine, locks=FlakyLocks())
    out = Collect()
    await turn.run(message(), out)
    assert [r.text for r in out.sent] == ["you said hola"]


async def test_cancelled_before_the_dialogue_the_message_stays_pending(db: SQLite) -> None:
    gate, engine = Gate(), Engine()
    turn, inbox = await make_turn(db, engine, gate)
    msg = message()
    await inbox.accept(msg)
    task = asyncio.create_task(turn.run(msg, Collect()))
    await gate.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.calls == 0
    assert [m.message_id for m in await inbox.claim(all_pending=True)] == [
        "SM1"
    ]  # processed on resume


async def test_cancelled_in_the_dialogue_it_stays_pending_to_be_resumed(db: SQLite) -> None:
    engine = Engine()
    engine.hold = asyncio.Event()
    turn, inbox = await make_turn(db, engine)
    msg = message()
    await inbox.accept(msg)
    task = asyncio.create_task(turn.run(msg, Collect()))
    await engine.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # resumed later (the engine then answers from the conversation if Rasa had taken
    # it in: test_a_resumed_message_the_dialogue_already_took_is_not_run_again)
    [again] = await resume(inbox)
    assert again.message_id == "SM1" and again.resumed


async def test_answer_runs_without_delivering(db: SQLite) -> None:
    engine = Engine()
    turn, _ = await make_turn(db, engine)
    out = Collect()
    ctx = await turn.answer(message("two"), out)
    assert [r.text for r in ctx.replies] == ["you said two"] and out.sent == []


def test_one_error_vocabulary() -> None:
    for status in (408, 425, 429, 500, 503):
        assert error_for_status(status, "x").transient, status
    for status in (400, 401, 403, 404, 409, 422):
        assert not error_for_status(status, "x").transient, status
    assert error_for_status(429, "x", "7").retry_after == 7.0
    assert classify(asyncio.TimeoutError()).transient
    assert classify(ConnectionRefusedError()).transient
    assert not classify(KeyError("x")).transient

    class GrpcLike(Exception):
        def code(self) -> Any:
            return type("Code", (), {"name": "UNAVAILABLE"})()

    assert classify(GrpcLike()).transient
    assert classify(sqlite3.OperationalError("database is locked")).transient
    assert not classify(sqlite3.OperationalError("no such table: x")).transient
    assert isinstance(LockTimeout("x"), TransientError)


@pytest.mark.parametrize(
    ("text", "index"),
    [("2", 1), ("2.", 1), ("two", 1), ("Dos.", 1), ("the second one", 1), ("dois", 1),
     ("la tercera", 2), ("Three!", 2), ("four", None), ("two or three", None), ("hola", None)],
)  # fmt: skip
def test_a_choice_by_number_or_word(text: str, index: int | None) -> None:
    offered = [Button("Horario", "/a"), Button("Envíos", "/b"), Button("Hablar", "/c")]
    expected = offered[index] if index is not None else None
    assert match_choice(text, offered) == expected
    assert match_choice("envios", offered) == offered[1]


# ---------------------------------------------------------------- over the wire


class ScriptedSTT(SpeechToText):
    """A custom engine loaded by dotted path (HABLA_STT=tests.test_turn.ScriptedSTT)."""

    name: ClassVar[str] = "scripted"
    says: ClassVar[list[str]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> ScriptedSTT:
        return cls()

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        return Transcript(self.says.pop(0), "es", 0.95, 2.0, self.name, 0.99)


async def test_a_spoken_number_picks_the_numbered_choice(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    # before: ResolveChoice ran before Transcribe, so a spoken "dos" never matched
    env = base_env(tmp_path / "d", twilio_api.url) | {
        "HABLA_STT": "tests.test_turn.ScriptedSTT",
        "HABLA_TTS": "off",
    }
    client, runtime = await make_server(env=env)
    user = "+34600999888"

    async def send(body: str, **fields: str) -> list[str]:
        before = len(twilio_api.sent)
        resp = await post_twilio(client, whatsapp_form(body, user=user, **fields))
        assert resp.status == 200
        assert await runtime.dispatcher.wait_idle(60)
        return [m.body for m in twilio_api.sent[before:]]

    greeting = "\n".join(await send("hola"))
    assert "1. Horario" in greeting and "2. Envíos" in greeting
    ScriptedSTT.says[:] = ["Dos."]
    note = await asyncio.to_thread(pcm_to_ogg_opus, np.zeros(16000, dtype=np.float32), 16000)
    url = twilio_api.add_media(note, "audio/ogg")
    replies = await send(
        "", NumMedia="1", MediaUrl0=url, MediaContentType0="audio/ogg", MessageType="audio"
    )
    shipping = "\n".join(replies)
    assert "Enviamos" in shipping, shipping  # the answer to /shipping, in Spanish


def test_replace_keeps_typed_fields() -> None:
    ctx = TurnContext(inbound=message(), output=Collect())
    assert replace(ctx, language="es").voice_in is None
