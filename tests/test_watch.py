"""``habla run --watch``: a change to a copy of the bot retrains in a subprocess, the new
model is swapped in between turns, and the messages sent meanwhile are all answered, in
order, exactly once; a change that cannot be trained keeps the previous model."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path
from typing import Any

from habla.server import Runtime
from habla.watch import Watcher
from nlu.engine import Engine, RasaEngine
from runtime.messages import BotReply, Delivery, InboundMessage
from runtime.output import OutputChannel
from runtime.settings import load_settings
from tests.conftest import PROJECT, base_env

WAIT_S = 900.0  # a bound for training and loading on a busy 2-core machine, not a pace
GIFT_WRAP = "Yes, we gift-wrap every order for free."
EXPECTED = {
    "hello": "Hi! I'm the shop assistant. How can I help?",
    "thanks a lot": "You're welcome!",
    "when are you open?": "We're open Monday to Friday 9:00–18:00",
}


class Recorder(OutputChannel):
    """Every reply delivered, with the message it answers; a future per message."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (conversation, message id, text)
        self.answered: dict[str, asyncio.Future[str]] = {}

    def expect(self, message_id: str) -> asyncio.Future[str]:
        future = asyncio.get_running_loop().create_future()
        self.answered[message_id] = future
        return future

    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        self.sent.append((msg.conversation_id, msg.message_id, reply.text))
        future = self.answered.get(msg.message_id)
        if future is not None and not future.done():
            future.set_result(reply.text)
        return [Delivery(ok=True, provider_id=f"r{len(self.sent)}")]


class Held(Engine):
    """The old engine; the first turn that enters it waits there until released."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def load(self) -> None:
        await self.inner.load()

    def bind_tracker_store(self, tracker_store: Any) -> None:
        self.inner.bind_tracker_store(tracker_store)

    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return await self.inner.handle(msg)


def change_the_bot(bot: Path) -> None:
    """A new intent with its response and rule; fewer epochs, so training is quick."""
    domain = (bot / "domain.yml").read_text(encoding="utf-8")
    domain = domain.replace("  - refund\n", "  - refund\n  - ask_gift_wrap\n", 1)
    domain = domain.replace(
        "responses:\n", f'responses:\n  utter_gift_wrap:\n    - text: "{GIFT_WRAP}"\n', 1
    )
    (bot / "domain.yml").write_text(domain, encoding="utf-8")
    with (bot / "data" / "nlu" / "en.yml").open("a", encoding="utf-8") as f:
        f.write(
            "\n  - intent: ask_gift_wrap\n    examples: |\n      - do you gift wrap?\n"
            "      - can you gift wrap my order\n      - is gift wrapping available\n"
            "      - gift wrap please\n      - can I get it gift wrapped\n"
            "      - do you offer gift wrapping\n      - I want gift wrapping\n"
        )
    with (bot / "data" / "rules.yml").open("a", encoding="utf-8") as f:
        f.write(
            "\n  - rule: Gift wrap\n    steps:\n      - intent: ask_gift_wrap\n"
            "      - action: utter_gift_wrap\n"
        )
    config = (bot / "config.yml").read_text(encoding="utf-8")
    config = config.replace("epochs: 30", "epochs: 5").replace("epochs: 60", "epochs: 30")
    (bot / "config.yml").write_text(config, encoding="utf-8")


async def test_watch_retrains_and_swaps_without_losing_or_reordering_turns(
    engine: RasaEngine, tmp_path: Path
) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    for name in ("domain.yml", "config.yml", "catalog.yml"):
        shutil.copy(PROJECT / name, bot / name)
    shutil.copytree(PROJECT / "data", bot / "data")
    env = base_env(tmp_path / "data") | {
        "HABLA_BOT_DIR": str(bot),
        "HABLA_MODELS_DIR": str(tmp_path / "models"),
        "HABLA_CHANNELS": "",
    }
    # the copy's files are the repository's: the shared engine serves its model
    runtime = Runtime(load_settings(env=env), engine=engine)
    await runtime.start()
    watcher = Watcher(runtime, bot, tmp_path / "models", interval_s=0.2)
    watching = asyncio.create_task(watcher.run())
    out = Recorder()
    ids = itertools.count(1)
    sent: dict[str, list[tuple[str, str]]] = {"+34600000001": [], "+34600000002": []}

    async def send(conversation: str, text: str) -> asyncio.Future[str]:
        message_id = f"SM{next(ids):06d}"
        answered = out.expect(message_id)
        msg = InboundMessage(
            channel="test", conversation_id=conversation, message_id=message_id, text=text
        )
        assert await runtime.accept(msg, out)
        sent[conversation].append((message_id, text))
        return answered

    def burst() -> list[asyncio.Future[asyncio.Future[str]]]:
        """Messages to both conversations, queued behind each other (not awaited)."""
        return [asyncio.ensure_future(send(c, t)) for t in EXPECTED for c in sent]

    async def answered(futures: list[asyncio.Future[asyncio.Future[str]]]) -> None:
        replies = await asyncio.gather(*futures)
        await asyncio.wait_for(asyncio.gather(*replies), WAIT_S)

    # bursts at the moments that matter: while the new model loads (its first turn held
    # inside the old engine all along), and queued at the gate when the engines swap
    bursts: dict[str, list[asyncio.Future[asyncio.Future[str]]]] = {}
    reload = runtime.reload

    async def reload_with_traffic(model: Path) -> None:
        switch = runtime.switch
        assert switch is not None
        held = Held(switch.current)
        switch.current = held
        swap = switch.swap

        async def swap_with_traffic(*args: Any) -> Engine:
            await held.entered.wait()  # a turn is inside the old engine
            bursts["swap"] = burst()
            swapping = asyncio.ensure_future(swap(*args))
            # the swap's first step (closing the gate) is scheduled before the release
            asyncio.get_running_loop().call_soon(held.release.set)
            return await swapping

        switch.swap = swap_with_traffic  # type: ignore[method-assign,assignment]
        bursts["load"] = burst()
        await reload(model)

    runtime.reload = reload_with_traffic  # type: ignore[method-assign]

    try:
        await asyncio.wait_for(watcher.watching.wait(), WAIT_S)
        # 1. a change that cannot be trained: the previous model keeps answering
        rules = bot / "data" / "rules.yml"
        good_rules = rules.read_text(encoding="utf-8")
        rules.write_text(good_rules + "\n  - rule: [broken\n", encoding="utf-8")
        await answered(burst())  # answered by the current model meanwhile
        await asyncio.wait_for(watcher.changed.wait(), WAIT_S)
        assert watcher.failures and watcher.reloads == 0
        assert runtime.engine is engine
        watcher.changed.clear()

        # 2. a good change: retrained in a subprocess while messages keep coming
        rules.write_text(good_rules, encoding="utf-8")
        change_the_bot(bot)
        await answered(burst())
        await asyncio.wait_for(watcher.changed.wait(), WAIT_S)
        assert watcher.reloads == 1, watcher.failures
        assert runtime.engine is not engine
        assert (watcher.model or Path()).parent == tmp_path / "models"
        await answered(bursts["load"])
        await answered(bursts["swap"])

        # the new model knows the new intent; the old ones still work
        answer = await send("+34600000001", "do you gift wrap?")
        assert await asyncio.wait_for(answer, WAIT_S) == GIFT_WRAP
        answer = await send("+34600000002", "hello")
        assert await asyncio.wait_for(answer, WAIT_S) == EXPECTED["hello"]
    finally:
        watching.cancel()
        await runtime.close()

    # every message answered exactly once, in the order it was sent, correctly
    for conversation, messages in sent.items():
        delivered = [(m, text) for c, m, text in out.sent if c == conversation]
        assert [m for m, _ in delivered] == [m for m, _ in messages]
        for (_, asked), (_, got) in zip(messages, delivered, strict=True):
            want = EXPECTED.get(asked, GIFT_WRAP)
            assert got.startswith(want), (asked, got)
