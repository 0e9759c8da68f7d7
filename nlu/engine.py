"""The dialogue engine seam, and Rasa's ``Agent`` in-process behind it.

The rest of the server only knows :class:`Engine`: hand it an inbound message, get
the bot's replies. A remote Rasa server could replace :class:`RasaEngine` later
without touching channels or the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nlu.parse_cache import install_parse_cache
from runtime.messages import BotReply, InboundMessage

logger = logging.getLogger(__name__)


class Engine(ABC):
    @abstractmethod
    async def load(self) -> None:
        """Load the model (slow; called once at start-up)."""

    @abstractmethod
    def bind_tracker_store(self, tracker_store: Any) -> None:
        """Keep conversation state in this store (Rasa's ``TrackerStore`` interface)."""

    @abstractmethod
    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        """Run one user message through NLU, dialogue and actions."""

    def bind_services(self, dependencies: Mapping[str, object]) -> None:  # noqa: B027
        """Hand in-process actions these services (see nlu/actions.py ``inject``)."""

    async def close(self) -> None:
        return None


def rasa_metadata(msg: InboundMessage) -> dict[str, Any]:
    """What actions see in ``tracker.latest_message['metadata']``."""
    meta: dict[str, Any] = {"channel": msg.channel, **msg.metadata}
    if msg.sender:
        meta["phone"] = msg.sender
    if msg.profile_name:
        meta["profile_name"] = msg.profile_name
    if msg.reply_to:  # where replies go: actions that reply later (payments) need it
        meta["reply_to"], meta["reply_from"] = msg.reply_to, msg.reply_from
    if msg.location is not None:
        loc = msg.location
        meta["location"] = {
            "latitude": loc.latitude,
            "longitude": loc.longitude,
            "address": loc.address,
            "label": loc.label,
        }
    if msg.media:
        meta["media"] = [{"url": m.url, "content_type": m.content_type} for m in msg.media]
    return meta


class RasaEngine(Engine):
    """``rasa.core.agent.Agent`` in this process.

    The caller (the turn) already holds the conversation's lock, so messages go to the
    agent's ``MessageProcessor`` directly rather than through Rasa's own lock store.
    """

    def __init__(
        self,
        model_path: Path,
        action_endpoint: Any,
        parse_cache: int = 0,
        flat_history: bool = True,
        fast_load: bool = True,
        graph_cache: Path | None = None,
        tf_threads: int = 1,
        prediction_cache: int = 4096,
    ) -> None:
        self.model_path = model_path
        self.action_endpoint = action_endpoint
        self.parse_cache = parse_cache
        self.flat_history = flat_history
        self.fast_load = fast_load
        self.graph_cache = graph_cache
        self.tf_threads = tf_threads
        self.prediction_cache = prediction_cache
        self.agent: Any = None
        self.tracker_store: Any = None
        self._warming: Future[None] | None = None

    async def load(self) -> None:
        if self.agent is not None:
            return

        def load() -> Any:
            warm_ups = ThreadPoolExecutor(1, thread_name_prefix="habla-warm-up")
            try:
                with frozen_after() as imported:
                    agent = load_agent(warm_ups, imported)
                    self._warming = warm_up(agent.processor, warm_ups)
                return agent
            finally:
                warm_ups.shutdown(wait=False)  # (what was submitted still runs)

        def load_agent(warm_ups: ThreadPoolExecutor, imported: Callable[[], None]) -> Any:
            # off the event loop: importing TensorFlow and Rasa takes seconds too
            from nlu.logs import load_rasa

            load_rasa()  # (records what TensorFlow and Keras warn at import)
            limit_tf_threads(self.tf_threads)
            from rasa.core.agent import Agent
            from rasa.core.lock_store import InMemoryLockStore

            from nlu import fastload, history, speedups, unpack

            speedups.install()
            # process-wide (Rasa's classes): the flag of the engine loading now decides
            if self.fast_load:
                fastload.install(cache=self.graph_cache)
                unpack.install(cache=self.graph_cache / "models" if self.graph_cache else None)
            else:
                fastload.uninstall()
                unpack.uninstall()
            if self.flat_history:
                history.install()
            from nlu import prediction_cache

            prediction_cache.install(self.prediction_cache)  # (0: Rasa's own, process-wide)
            imported()
            with warnings.catch_warnings(record=True), fastload.warm_ups_in(warm_ups):
                return Agent.load(
                    str(self.model_path),
                    lock_store=InMemoryLockStore(),
                    action_endpoint=self.action_endpoint,
                )

        self.agent = await asyncio.to_thread(load)
        from nlu import nlg, prediction_cache  # (import Rasa: after the load above)

        prediction_cache.serve(self.agent)

        nlg.install(self.agent)  # button payloads carrying JSON are not slot templates
        from nlu.remote.base import has_remote_nlu

        remote = has_remote_nlu(self.agent.processor)
        install_parse_cache(self.agent.processor, self.parse_cache)
        if remote:  # its network call must not hold this event loop
            parse_in_thread(self.agent.processor)
        logger.info("loaded model %s", self.model_path.name)

    def bind_services(self, dependencies: Mapping[str, object]) -> None:
        executor = getattr(self.action_endpoint, "executor", None)
        if executor is not None:
            from nlu.actions import inject

            inject(executor, dependencies)

    def bind_tracker_store(self, tracker_store: Any) -> None:
        tracker_store.domain = self.agent.domain
        self.tracker_store = tracker_store
        self.agent.tracker_store = tracker_store
        self.agent.processor.tracker_store = tracker_store

    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        from rasa.core.channels.channel import UserMessage

        if self._warming is not None:  # the first turns wait for the warm-ups (see load)
            await asyncio.wrap_future(self._warming)
            self._warming = None
        if msg.resumed and msg.message_id:
            replayed = await self._already_handled(msg)
            if replayed is not None:
                return replayed
        if msg.slots:
            await self._set_slots(msg.conversation_id, msg.slots)
        output = collecting_output(msg.channel)
        user_message = UserMessage(
            text=msg.button_payload or msg.text,
            output_channel=output,
            sender_id=msg.conversation_id,
            input_channel=msg.channel,
            message_id=msg.message_id or None,
            metadata=rasa_metadata(msg),
        )
        await self.agent.processor.handle_message(user_message)
        return [BotReply.from_rasa(m) for m in output.messages]

    async def _already_handled(self, msg: InboundMessage) -> list[BotReply] | None:
        """A resumed message Rasa already took in (its server died after the dialogue
        saved, before the replies were stored): the bot's answer from the conversation,
        rather than running the message through the policies a second time."""
        tracker = await self.tracker_store.retrieve(msg.conversation_id)
        if tracker is None:
            return None
        events = list(tracker.events)
        for at in range(len(events) - 1, -1, -1):
            event = events[at]
            if type(event).__name__ == "UserUttered" and event.message_id == msg.message_id:
                replies = []
                for later in events[at + 1 :]:
                    kind = type(later).__name__
                    if kind == "UserUttered":
                        break
                    if kind == "BotUttered":
                        replies.append(BotReply.from_rasa({"text": later.text, **later.data}))
                logger.info("message %s was already answered: its replies are resent", msg.key)
                return replies
        return None

    async def _set_slots(self, conversation_id: str, values: dict[str, Any]) -> None:
        """Slots the runtime knows (e.g. the WhatsApp window), if the domain declares them."""
        from rasa.shared.core.events import SlotSet

        known = {slot.name for slot in self.agent.domain.slots}
        tracker = await self.tracker_store.get_or_create_tracker(conversation_id)
        events = [
            SlotSet(name, value)
            for name, value in values.items()
            if name in known and tracker.get_slot(name) != value
        ]
        if events:
            for event in events:
                tracker.update(event)
            await self.tracker_store.save(tracker)


WARM_UP_TEXT = "Hello! Could I have 2 of them tomorrow at 10:30?"


def warm_up(processor: Any, executor: ThreadPoolExecutor) -> Future[None]:
    """Parse a made-up message (:data:`WARM_UP_TEXT`) on ``executor``, after the first
    predictions of the models loaded from the graph cache (nlu/fastload.py): TensorFlow
    prepares DIET's graph again for its first real input (0.2 s, in C++, without the
    GIL) and the NLU components import what they import lazily (dateparser: 0.2 s).
    They run beside the end of the load (the garbage collection, the server's wiring)
    instead of in the first user's turn, which waits for the returned future. Nothing
    is stored: no tracker, no parse cache. Not with a remote NLU provider (a request
    to a paid API) and never fatal: a warm-up that fails is logged, the turn goes on."""
    from nlu.remote.base import has_remote_nlu

    parse = processor._parse_message_with_graph  # (bound now: before the parse cache)

    def run() -> None:
        from rasa.core.channels.channel import UserMessage
        from rasa.shared.core.trackers import DialogueStateTracker

        if has_remote_nlu(processor):
            return
        try:
            tracker = DialogueStateTracker.from_events("habla-warm-up", [])
            parse(UserMessage(WARM_UP_TEXT, sender_id="habla-warm-up"), tracker, True)
        except Exception:
            logger.warning("the warm-up parse failed (the first turn pays for it)", exc_info=True)

    return executor.submit(run)


def parse_in_thread(processor: Any) -> None:
    """Run ``processor``'s NLU graph in a worker thread.

    Rasa 3.6 runs the graph synchronously inside the async ``parse_message``: fine for
    local components (a few ms of CPU), not for a remote NLU provider (nlu/remote),
    whose ``process`` waits on the network for up to its timeout. With one in the
    model, the graph runs in ``asyncio.to_thread`` so the event loop (the server's, or
    an engine worker's, which runs several conversations' turns) keeps going. The
    rest is Rasa's ``parse_message`` as written (rasa/core/processor.py).
    """
    from rasa.shared.core.trackers import DialogueStateTracker

    if getattr(processor, "http_interpreter", None):
        return

    async def parse_message(
        message: Any, tracker: Any = None, only_output_properties: bool = True
    ) -> dict[str, Any]:
        if tracker is None:
            tracker = DialogueStateTracker.from_events(message.sender_id, [])
        parse_data: dict[str, Any] = await asyncio.to_thread(
            processor._parse_message_with_graph, message, tracker, only_output_properties
        )
        processor._update_full_retrieval_intent(parse_data)
        processor._check_for_unseen_features(parse_data)
        return parse_data

    processor.parse_message = parse_message


@functools.cache
def _collector_class() -> Any:
    from rasa.core.channels.channel import CollectingOutputChannel

    class Collector(CollectingOutputChannel):
        """Collects the replies under the name of the channel the message came from,
        so responses can have channel-specific variations (``channel: twilio_voice``)."""

        def __init__(self, channel: str) -> None:
            super().__init__()
            self.channel = channel

        def name(self) -> str:
            return self.channel

    return Collector


def collecting_output(channel: str) -> Any:
    """Rasa's collecting output channel, named after ``channel``."""
    return _collector_class()(channel)


def limit_tf_threads(threads: int) -> None:
    """TensorFlow's thread pools for this process (``HABLA_TF_THREADS``; 0: its default).
    They are fixed once TensorFlow first runs: a process that trained or loaded a model
    before keeps what it had."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.info(
            "TensorFlow already ran in this process: its thread pools stay at %d",
            tf.config.threading.get_intra_op_parallelism_threads(),
        )


_loads = 0
"""Models this process has loaded (:func:`frozen_after`)."""


@contextlib.contextmanager
def frozen_after() -> Iterator[Callable[[], None]]:
    """Loading a model allocates millions of objects that live as long as the process
    (TensorFlow, Rasa, the model). Python's cyclic collector traversed all of them
    about ten times during a load (1 s of it, measured on the example bot) and would
    again on every later full collection: a pause of about 200 ms that stalls every
    conversation of the process. So the collector is paused during the load, one
    collection then clears what the load left over, and what survives is frozen
    (``gc.freeze``: never traversed again; still freed by reference counting).

    The load calls the yielded function once its imports are done: on the process's
    first load (:data:`_loads`) what exists then is frozen at once, so
    the final collection traverses only the model's objects (0.05 s instead of 0.44 s
    on the example bot, time the warm-up thread needs the GIL for). The imports'
    reference cycles of garbage (about 2,000, measured) then stay: the resident size
    after the load was the same either way (700 MB). A second load (``habla run
    --watch``) unfreezes first and freezes only at the end, so the replaced model's
    reference cycles can be collected."""
    global _loads
    first = _loads == 0
    gc.unfreeze()
    enabled = gc.isenabled()
    gc.disable()

    def imported() -> None:
        if first:
            gc.freeze()

    try:
        yield imported
    finally:
        _loads += 1
        if enabled:
            gc.enable()
        gc.collect()
        gc.freeze()
