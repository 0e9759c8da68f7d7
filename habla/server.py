"""The aiohttp application: settings in, a server with every channel out.

:class:`Runtime` holds what one server process owns (stores, engine, turn, channels)
and hands channels only the callables they need. Nothing is reached through
``request.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from channels.base import ChannelServices, InputChannel, OutputChannel
from commerce.orders import Order
from commerce.outbox import Job
from commerce.webhook import PaymentWebhook
from habla import wiring
from habla.admin import AdminAPI
from habla.dashboard import Dashboard
from habla.metrics_api import MetricsEndpoint
from i18n.translation import CachingTranslator
from nlu.engine import Engine
from nlu.switch import SwitchableEngine
from runtime import logs, metrics
from runtime.calls import CallLog
from runtime.coordination import Coordination, EmbeddedCoordination, Inbox
from runtime.dispatch import Dispatcher
from runtime.errors import TransientError, classify
from runtime.media import MediaHost
from runtime.messages import SYSTEM_PREFIX, InboundMessage, mask_phone
from runtime.settings import Settings
from runtime.speech import CallSpeech
from runtime.turn import LINE_POLL_S, Turn, TurnContext, WaitInLine
from voice.calls import PhoneSpeech
from voice.stages import trigger
from voice.stt.base import SpeechToText
from voice.tts.base import TextToSpeech, parse_voices

logger = logging.getLogger(__name__)


class Runtime:
    """What one server process owns: stores, engine, the turn, channels, commerce.

    Everything is built by ``habla/wiring.py``; this class only holds the parts,
    starts and stops them in order, and hands channels the callables they need.
    """

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self._owns_engine = engine is None
        self.dispatcher = Dispatcher()
        self.db = wiring.database(settings)
        self.deliveries = wiring.build_delivery_log(settings, self.db)
        self.calls = CallLog(self.db)
        self.analytics = wiring.build_analytics(settings, self.db)
        self._turn: Turn | None = None
        self.ready = asyncio.Event()  # set when the engine is loaded and turns can run
        self.loading: asyncio.Task[None] | None = None  # load(), when in the background
        self.translator: CachingTranslator | None = None
        self.stores: Coordination | None = None
        self.stt: SpeechToText | None = None
        self._warmups: list[asyncio.Task[None]] = []
        self._held: dict[str, InboundMessage] = {}  # accepted, not yet settled, by key
        self._leases: asyncio.Task[None] | None = None
        self._tracker_store: Any = None
        self.tts: TextToSpeech | None = None
        v = settings.voice
        self.media = MediaHost(
            settings.data_dir / "media", v.media_secret, v.media_ttl_s, settings.public_base
        )
        self.commerce = wiring.build_commerce(settings, self.db)  # started in start()
        self.commerce.outbox.on_settled = self._outbox_settled
        self.commerce.notifier = self.notify
        self.payment_webhooks = [
            PaymentWebhook(self.commerce, self.notify, name)
            for name in wiring.payment_webhooks(settings)
        ]
        services = ChannelServices(
            settings=settings,
            accept=self.accept,
            delivery_status=self.delivery_status,
            conversation_id=self.conversation_id,
            last_inbound=self.last_inbound,
            converse=self.converse,
            language=self.language,
            responses=self.responses,
            calls=self.calls,
            call_speech=self.call_speech,
            events=self.conversation_events,
            set_language=self.set_language,
        )
        self._call_speech: CallSpeech | None = None
        self.switch: SwitchableEngine | None = None  # what the turn's Dialogue calls
        self._domain_responses: dict[str, list[dict[str, Any]]] = {}
        self.channels: dict[str, InputChannel]
        self.channels, self.closed_channels = wiring.build_channels(settings, services)

    def conversation_id(self, channel: str, address: str) -> str:
        """One conversation per person (E.164 number) unless settings keep channels apart."""
        if self.settings.server.conversation_scope == "channel":
            return f"{channel}:{address}"
        return address

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        return await self.inbox.last_inbound(channel, conversation_id)

    @property
    def inbox(self) -> Inbox:
        if self.stores is None:
            raise RuntimeError("the runtime has not started")
        return self.stores.inbox

    @property
    def turn(self) -> Turn:
        if self._turn is None:
            raise RuntimeError("the runtime has not started")
        return self._turn

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for name in self.closed_channels:
            routes += wiring.channel_class(name).closed_routes()
        for channel in self.channels.values():
            routes += channel.routes()
        admin = AdminAPI(
            self.settings.rest.admin_token,
            self.conversation_events,
            self.deliveries,
            self.commerce,
            self.calls,
        )
        health = [web.get("/health", self.health)] + self._metrics_endpoint().routes()
        for hook in self.payment_webhooks:
            routes += hook.routes()
        dashboard = Dashboard(
            self.settings.rest.admin_token,
            self.analytics,
            secure=self.settings.public_base.startswith("https://"),
        )
        return health + routes + admin.routes() + dashboard.routes() + self.media.routes()

    def _metrics_endpoint(self) -> MetricsEndpoint:
        """``/metrics``, with the gauges read from the stores when scraped."""
        gauges = metrics.StoreGauges()
        gauges.add(
            "habla_outbox_jobs",
            "CRM and payment writes in the outbox, by status (pending, done, failed).",
            ["status"],
            self._outbox_counts,
        )
        gauges.add(
            "habla_inbox_pending_messages",
            "Accepted messages whose turn has not ended (every server's, with Redis).",
            [],
            self._inbox_pending,
        )
        gauges.add(
            "habla_calls_active",
            "Phone calls in progress on this server's call log, by mode (gather, stream).",
            ["mode"],
            self._active_calls,
        )
        return MetricsEndpoint(self.settings.server.metrics_token, gauges)

    async def _outbox_counts(self) -> dict[tuple[str, ...], float]:
        counts = await self.commerce.outbox.counts()
        return {(status,): float(n) for status, n in counts.items()}

    async def _inbox_pending(self) -> dict[tuple[str, ...], float]:
        return {(): float(await self.inbox.pending_count())} if self.stores is not None else {}

    async def _active_calls(self) -> dict[tuple[str, ...], float]:
        return {(mode,): float(n) for mode, n in (await self.calls.active()).items()}

    async def delivery_status(
        self, provider_id: str, status: str, error_code: str = "", error: str = ""
    ) -> bool:
        """A provider's status report on a reply: stored, counted, and (when this
        process sent the reply) the rest of the callback's lines carry its turn id."""
        turn = logs.turn_of_delivery(provider_id)
        if turn:
            logs.use_turn(turn)
        metrics.delivery_status(status)
        logger.debug("delivery status %s reported", status)
        return await self.deliveries.status(provider_id, status, error_code, error)

    async def conversation_events(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every event of a conversation (all sessions), for the operator API."""
        if self._tracker_store is None:
            return []
        tracker = await self._tracker_store.retrieve_full_tracker(conversation_id)
        return [e.as_dict() for e in tracker.events] if tracker is not None else []

    async def health(self, request: web.Request) -> web.Response:
        """For load balancers: 200 once the engine is loaded; 503 while it loads (the
        server already accepts webhooks then, and answers them once it is ready)."""
        if not self.ready.is_set():
            return web.json_response({"status": "loading", "held": len(self._held)}, status=503)
        return web.json_response({"status": "ok", "held": len(self._held)})

    def urls(self, base: str) -> dict[str, list[str]]:
        """Every webhook URL by channel (and the payment provider's)."""
        out = {}
        for name in list(self.channels) + list(self.closed_channels):
            out[name] = [base + p for p in wiring.channel_class(name).url_paths()]
        for hook in self.payment_webhooks:
            out[hook.provider] = [base + hook.path]
        return out

    @property
    def closed_endpoints(self) -> dict[str, list[str]]:
        """Webhooks that answer 403, with the settings that would open them."""
        closed = dict(self.closed_channels)
        for hook in self.payment_webhooks:
            missing = wiring.payments_missing(self.settings, hook.provider)
            if missing:
                closed[hook.provider] = missing
        return closed

    async def start(self) -> None:
        """Open the stores and channels, then load the engine: ready when it returns."""
        await self.open()
        await self.load()

    async def open(self) -> None:
        """What a webhook needs to be accepted (stores, the inbox, channels, commerce):
        seconds. Messages accepted before :meth:`load` ends wait for it in the queue."""
        s = self.settings
        # before any metric is written, and before engine workers start (they inherit it)
        metrics.use_directory(metrics.server_directory(s.data_dir), clean=True)
        tracker_store = self._tracker_store = wiring.build_tracker_store(s, self.db)
        await tracker_store.setup()
        await self.deliveries.setup()
        await self.calls.setup()
        await self.analytics.setup()  # after the stores' tables: it indexes the events
        self.stores = await wiring.build_coordination(s, self.db)
        await wiring.start_commerce(self.commerce, s, self.db)
        await self.media.start()
        self._domain_responses = await asyncio.to_thread(wiring.domain_responses, s.path(s.bot.dir))
        for channel in self.channels.values():
            await channel.start()
        for name, missing in self.closed_channels.items():
            logger.warning(
                "channel '%s' is not configured (%s unset): its webhooks answer 403",
                name,
                ", ".join(missing),
            )
        local = [
            name
            for name, store in (
                ("HABLA_TRACKER_STORE", s.store.tracker_store),
                ("HABLA_ORDER_STORE", s.commerce.order_store),
            )
            if store != "mongo"
        ]
        if s.store.coordination == "redis" and local:
            logger.warning(
                "HABLA_COORDINATION=redis, but %s keep state in %s on this machine: every "
                "server must share that folder; servers on several machines need them "
                "set to mongo",
                " and ".join(local),
                s.path(s.store.data_dir),
            )

    async def load(self) -> None:
        """The engine (the Rasa model: most of a start), the speech engines and the
        turn; then unfinished messages are resumed and the server is :attr:`ready`."""
        s, stores = self.settings, self.stores
        assert stores is not None, "open() first"
        began = time.monotonic()
        self.stt, self.tts = wiring.build_stt(s), wiring.build_tts(s)
        # speech models load in the background, beside the Rasa model (mostly native
        # code: on another core, while Rasa's load holds the GIL); the server answers
        # text as soon as Rasa is in, and a voice note that arrives first waits for its
        # engine (engines start lazily)
        self._warmups = [
            asyncio.create_task(self._warm_up(e)) for e in (self.stt, self.tts) if e is not None
        ]
        if self.engine is None:
            model = await asyncio.to_thread(wiring.model_path, s)
            self.engine = wiring.build_engine(s, model, self.commerce)
        else:  # an engine shared by tests gets this server's commerce
            self.engine.bind_services({"commerce": self.commerce})
        await self.engine.load()
        self.engine.bind_tracker_store(self._tracker_store)
        self.translator = await self._start_translator(stores)
        self.switch = SwitchableEngine(self.engine)  # habla run --watch: reload()
        self._turn = await self._build_turn(self._domain_responses)
        # one server alone (embedded): everything unfinished is its own, from before a
        # crash or stop; shared: what a dead server leased is claimed once its lease ends
        try:
            await self.resume_pending(all_pending=isinstance(stores, EmbeddedCoordination))
        except Exception as e:  # the store is briefly down: the lease rounds claim them
            if not classify(e).transient:
                raise
            logger.warning("unfinished messages not resumed yet (%s): claimed later", e)
        self._leases = asyncio.create_task(self._keep_leases())
        await self.commerce.outbox.start()  # its retries may push events into turns
        # what the start made lives as long as the process: never traversed again by
        # the cyclic collector (with engine workers, this process's full collections
        # took about 100 ms each under load, stalling every turn it relays); without
        # a collection first, the start's few garbage cycles stay
        gc.freeze()
        self.ready.set()
        logger.info("engine loaded in %.1f s: ready", time.monotonic() - began)

    async def _build_turn(self, responses: dict[str, list[dict[str, Any]]]) -> Turn:
        assert self.stores is not None and self.switch is not None
        parts = wiring.TurnParts(
            self.switch,
            self.stores,
            self.deliveries,
            self.media,
            self.translator,
            self.stt,
            self.tts,
            responses,
        )
        return await wiring.build_turn(self.settings, parts)

    async def reload(self, model: Path) -> None:
        """Serve ``model`` (``habla run --watch``, after the bot's files changed): it is
        loaded beside the current engine while turns go on, then swapped in between
        turns (:class:`SwitchableEngine`) with the domain's responses read again."""
        s = self.settings
        assert self.switch is not None, "load() first"
        began = time.monotonic()
        engine = wiring.build_engine(s, model, self.commerce)
        await engine.load()
        responses = await asyncio.to_thread(wiring.domain_responses, s.path(s.bot.dir))
        turn = await self._build_turn(responses)
        store = self._tracker_store

        def switch_over() -> None:  # between turns: none is inside the engine
            engine.bind_tracker_store(store)
            self._domain_responses, self._turn, self.engine = responses, turn, engine

        previous = await self.switch.swap(engine, switch_over)
        if self._owns_engine:
            await previous.close()
        self._owns_engine = True
        logger.info("now serving %s (loaded in %.1f s)", model.name, time.monotonic() - began)

    async def resume_pending(self, *, all_pending: bool = False) -> int:
        """Acknowledged messages whose turn never ended, because their server crashed or
        stopped: claim them (atomically; each goes to one server) and run their turns."""
        pending = [
            m for m in await self.inbox.claim(all_pending=all_pending) if m.key not in self._held
        ]
        resumed = 0
        for msg in pending:
            channel = self.channels.get(msg.channel)
            if channel is not None and channel.output is not None:
                self._queue(replace(msg, resumed=True), channel.output)
                resumed += 1
            else:
                await self.inbox.done(msg, "failed")
        if pending:
            logger.info("resumed %d of %d unfinished messages", resumed, len(pending))
        return resumed

    async def _keep_leases(self) -> None:
        """Every third of a lease: renew the leases of the messages this server holds
        (queued or in their turn), and claim those other servers stopped renewing."""
        while True:
            await asyncio.sleep(self.inbox.lease_s / 3)
            try:
                await self.inbox.renew(list(self._held.values()))
                await self.resume_pending()
            except Exception as e:  # the store is briefly down: next round
                logger.warning("inbox leases: %s", e)

    async def _start_translator(self, stores: Coordination) -> CachingTranslator | None:
        translator = wiring.build_translator(self.settings)
        if translator is None:
            return None
        caching = CachingTranslator(translator, stores.translations)
        await caching.start()
        return caching

    @staticmethod
    async def _warm_up(engine: SpeechToText | TextToSpeech) -> None:
        try:
            await engine.start()
        except Exception:
            logger.exception("speech engine '%s' did not start", engine.name)

    async def notify(self, order: Order, intent: str, event_id: str) -> bool:
        """Push an event about an order into its conversation, on the channel the user
        used: a turn like any other (lock, dialogue, language, delivery), processed
        once per event id."""
        channel = self.channels.get(order.channel)
        if channel is None or channel.output is None:
            logger.warning("order %s: channel %r is not open", order.order_id, order.channel)
            return False
        msg = InboundMessage(
            channel=order.channel,
            conversation_id=order.conversation_id,
            message_id=f"{SYSTEM_PREFIX}{intent}:{event_id}",
            text=trigger(intent, order_id=order.order_id),
            sender=order.address,
            reply_to=str(order.metadata.get("reply_to") or order.address),
            reply_from=str(order.metadata.get("reply_from") or ""),
        )
        await self.accept(msg, channel.output)
        return True

    async def _outbox_settled(self, job: Job) -> None:
        """A payment link the provider could not create during the turn: send it now
        (or say it failed)."""
        if job.kind != "payments.checkout":
            return
        order = await self.commerce.orders.get(job.payload["order_id"])
        if order is not None:
            intent = "payment_link_ready" if job.status == "done" else "payment_link_failed"
            await self.notify(order, intent, job.key)

    def _queue(self, msg: InboundMessage, output: OutputChannel) -> None:
        held, dispatcher = self._held, self.dispatcher
        if msg.message_id:
            held[msg.key] = msg  # its lease is renewed until its turn ends

        async def run() -> None:
            settled = True
            try:
                await self.ready.wait()  # accepted while the engine loads: waits for it
                await self.turn.run(msg, output, patient=True)
            except WaitInLine:  # behind an earlier message: after what is queued here
                settled = False
                await asyncio.sleep(LINE_POLL_S)
                dispatcher.submit(msg.conversation_id, run)
            finally:
                if settled:
                    held.pop(msg.key, None)

        dispatcher.submit(msg.conversation_id, run)

    async def accept(self, msg: InboundMessage, output: OutputChannel) -> bool:
        token = logs.start_turn(msg)  # this line and its turn's carry one id
        try:
            if not await self.inbox.accept(msg):
                logger.info("duplicate message on %s dropped", msg.channel)
                return False
            logger.info("message accepted on %s from %s", msg.channel, mask_phone(msg.sender))
            self._queue(msg, output)
            return True
        finally:
            logs.end_turn(token)

    async def converse(self, msg: InboundMessage, output: OutputChannel) -> TurnContext:
        """A turn the caller waits for (REST, calls): while the engine loads, it waits up
        to ``READY_WAIT_S``, then :class:`Loading` (a 503 with Retry-After)."""
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), READY_WAIT_S)
            except asyncio.TimeoutError:
                raise Loading("the engine is still loading") from None
        return await self.turn.run(msg, output)

    def call_speech(self) -> CallSpeech | None:
        """Speech for streamed calls, with the engines voice notes use."""
        if self._call_speech is None and self.stt is not None and self.tts is not None:
            c = self.settings.call
            self._call_speech = PhoneSpeech(
                self.stt,
                self.tts,
                parse_voices(self.settings),
                min_speech_ms=c.min_speech_ms,
                min_silence_ms=c.min_silence_ms,
            )
        return self._call_speech

    async def language(self, conversation_id: str) -> str | None:
        if self.stores is None:
            return None
        language, _ = await self.stores.languages.get(conversation_id)
        return language

    async def set_language(self, conversation_id: str, language: str) -> None:
        """A conversation's language, sticky (the inspector's language picker)."""
        if self.stores is None:
            raise RuntimeError("the runtime has not started")
        await self.stores.languages.set(conversation_id, language, True)

    def responses(self, name: str) -> dict[str, str]:
        """A domain response's texts by language (the domain is read at start)."""
        return wiring.response_texts(self._domain_responses, name)

    async def close(self) -> None:
        if self.loading is not None and not self.loading.done():
            self.loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loading
        await self.dispatcher.close()
        if self._leases is not None:  # turns cancelled above: their leases run out
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
        for channel in self.channels.values():
            await channel.close()
        if self._owns_engine and self.engine is not None:
            await self.engine.close()
        if self.translator is not None:
            await self.translator.close()
        for task in self._warmups:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for engine in (self.stt, self.tts):
            if engine is not None:
                await engine.close()
        await self.media.close()
        await self.commerce.close()
        await self.deliveries.close()
        await self.analytics.close()
        if hasattr(self._tracker_store, "close"):  # a client of its own (MongoDB)
            await self._tracker_store.close()
        if self.stores is not None:
            await self.stores.close()
        await self.db.close()

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.close()

    async def lifespan_loading(self, app: web.Application) -> AsyncIterator[None]:
        """Listen as soon as the stores are open; load the engine in the background."""
        await self.open()
        self.loading = asyncio.create_task(self.load())
        yield
        await self.close()


RUNTIME = web.AppKey("runtime", Runtime)
READY_WAIT_S = 10.0
"""How long a turn its caller waits for (REST, calls) waits for the engine to load."""


class Loading(TransientError):
    """The engine is still loading: answered 503 with Retry-After."""


RETRY_AFTER_S = 5
"""What a webhook refused with 503 (a store briefly down) asks its provider to wait."""


@web.middleware
async def close_unread(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request answered before its body was read (refused on its headers: a bad
    token, too large) closes its connection: a client that stopped sending the rest
    would otherwise reuse a connection the server still drains, and its next request
    would wait for nothing."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        if request.body_exists and not request.content.at_eof():
            e.force_close()
        raise
    if request.body_exists and not request.content.at_eof():
        response.force_close()
    return response


@web.middleware
async def store_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request that fails because a store or provider is briefly down (Redis,
    MongoDB) is answered 503 with ``Retry-After``, logged as one WARNING line, so the
    provider posts it again; nothing is acknowledged that was not stored. Anything else
    is a bug: its traceback is logged and the answer is a plain 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:
        error = classify(e)
        if not error.transient:
            raise
        logger.warning("%s %s answered 503 (%s)", request.method, request.path, error)
        raise web.HTTPServiceUnavailable(
            text="temporarily unavailable; retry later\n",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None


class MalformedRequests(logging.Filter):
    """aiohttp logs an ERROR with a traceback for each HTTP request it cannot parse
    (it answers those 400 itself): one WARNING line says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.msg == "Error handling request":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused (%s)", (exc,)
            record.exc_info = record.exc_text = None
        return True


_MALFORMED = MalformedRequests()


def create_app(
    settings: Settings, engine: Engine | None = None, *, background: bool = False
) -> web.Application:
    """Build the server. ``engine`` lets tests share one loaded model between apps.
    ``background``: the server listens once its stores are open and loads the engine
    meanwhile (``Runtime.loading``); webhooks are accepted at once and answered when it
    is ready (``habla run`` does this); otherwise it listens only when ready."""
    runtime = Runtime(settings, engine)
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # (once: a filter is a set)
    app = web.Application(client_max_size=1024**2, middlewares=[close_unread, store_errors])
    app.add_routes(runtime.routes())
    app.cleanup_ctx.append(runtime.lifespan_loading if background else runtime.lifespan)
    app[RUNTIME] = runtime  # for the CLI and tests; handlers never look it up
    return app
