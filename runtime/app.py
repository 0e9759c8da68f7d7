"""The aiohttp application: settings in, a server with every channel out.

:class:`Runtime` holds what one server process owns (stores, engine, turn, channels)
and hands channels only the callables they need. Nothing is reached through
``request.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from channels import channel_class
from channels.base import ChannelServices, InputChannel, OutputChannel
from commerce import service as commerce_service
from commerce.orders import Order
from commerce.outbox import Job
from commerce.service import Commerce
from commerce.webhook import PaymentWebhook
from i18n.detect import DETECTORS
from i18n.language import LanguagePolicy
from i18n.stages import AuthoredResponses, DetectLanguage, LocalizeReplies, TranslateForNLU
from i18n.store import LanguageStore, RedisLanguageStore, SQLiteLanguageStore
from i18n.translation import (
    CachingTranslator,
    RedisTranslationCache,
    SQLiteTranslationCache,
    TranslationCache,
    start_translator,
)
from nlu.actions import endpoint_from_settings
from nlu.engine import Engine, RasaEngine
from nlu.pool import WorkerPoolEngine
from nlu.training import ensure_model
from runtime.admin import AdminAPI
from runtime.coordination import (
    Choices,
    ConversationLocks,
    Inbox,
    InProcessLocks,
    RedisChoices,
    RedisInbox,
    RedisLocks,
    SQLiteChoices,
    SQLiteInbox,
)
from runtime.deliveries import DeliveryLog
from runtime.dispatch import Dispatcher
from runtime.media import MediaHost
from runtime.messages import SYSTEM_PREFIX, BotReply, InboundMessage, mask_phone
from runtime.settings import Settings, SettingsError
from runtime.sqlite import SQLite
from runtime.tracker_store import make_tracker_store
from runtime.turn import Acknowledge, Deliver, Dialogue, ResolveChoice, Turn
from voice import make_stt, make_tts, parse_voices
from voice.stages import ReplyMode, Speak, Transcribe, trigger
from voice.stt.base import SpeechToText
from voice.tts.base import TextToSpeech

logger = logging.getLogger(__name__)

# A message pending this long in a shared Redis inbox belongs to a worker that died.
SHARED_PENDING_STALE_S = 300.0


@dataclass(frozen=True)
class Stores:
    """Conversation-scoped state shared by every worker (embedded: one process)."""

    locks: ConversationLocks
    inbox: Inbox
    choices: Choices
    languages: LanguageStore
    translations: TranslationCache


async def embedded_stores(settings: Settings, db: SQLite) -> Stores:
    inbox = SQLiteInbox(db, settings.store.dedupe_ttl_s)
    choices = SQLiteChoices(db)
    languages = SQLiteLanguageStore(db)
    translations = SQLiteTranslationCache(db)
    for store in (inbox, choices, languages, translations):
        await store.setup()
    return Stores(InProcessLocks(), inbox, choices, languages, translations)


async def redis_stores(settings: Settings, db: SQLite) -> Stores:
    import redis.asyncio as aioredis

    client = aioredis.from_url(settings.store.redis_url)
    await client.ping()
    return Stores(
        RedisLocks(client),
        RedisInbox(client, settings.store.dedupe_ttl_s),
        RedisChoices(client),
        RedisLanguageStore(client),
        RedisTranslationCache(client),
    )


COORDINATION = {"embedded": embedded_stores, "redis": redis_stores}


class Runtime:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self._owns_engine = engine is None
        self.dispatcher = Dispatcher()
        self.db = SQLite(settings.data_dir / "habla.sqlite3")
        self.deliveries = DeliveryLog(self.db)
        self._turn: Turn | None = None
        self._locks: ConversationLocks | None = None
        self._inbox: Inbox | None = None
        self.translator: CachingTranslator | None = None
        self.stores: Stores | None = None
        self.stt: SpeechToText | None = None
        self._warmups: list[asyncio.Task[None]] = []
        self.tts: TextToSpeech | None = None
        v = settings.voice
        self.media = MediaHost(
            settings.data_dir / "media", v.media_secret, v.media_ttl_s, settings.public_base
        )
        self.commerce = Commerce(settings, self.db)
        self.commerce.outbox.on_settled = self._outbox_settled
        self.payment_webhook = PaymentWebhook(self.commerce, self.notify)
        services = ChannelServices(
            settings=settings,
            accept=self.accept,
            run_turn=self.run_turn,
            delivery_status=self.deliveries.status,
            conversation_id=self.conversation_id,
            last_inbound=self.last_inbound,
        )
        self.channels: dict[str, InputChannel] = {}
        self.closed_channels: dict[str, list[str]] = {}
        problems = []
        for name in filter(None, (n.strip() for n in settings.server.channels.split(","))):
            try:
                cls = channel_class(name)
            except (KeyError, ImportError, AttributeError, TypeError) as e:
                problems.append(f"server.channels (HABLA_CHANNELS): {e}")
                continue
            missing = cls.missing_secrets(settings)
            if missing:
                self.closed_channels[cls.name] = missing
            else:
                self.channels[cls.name] = cls(services)
        if problems:
            raise SettingsError(problems)

    def conversation_id(self, channel: str, address: str) -> str:
        """One conversation per person (E.164 number) unless settings keep channels apart."""
        if self.settings.server.conversation_scope == "channel":
            return f"{channel}:{address}"
        return address

    async def last_inbound(self, channel: str, conversation_id: str) -> float | None:
        return await self.inbox.last_inbound(channel, conversation_id)

    @property
    def inbox(self) -> Inbox:
        if self._inbox is None:
            raise RuntimeError("the runtime has not started")
        return self._inbox

    @property
    def turn(self) -> Turn:
        if self._turn is None:
            raise RuntimeError("the runtime has not started")
        return self._turn

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for name in self.closed_channels:
            routes += channel_class(name).closed_routes()
        for channel in self.channels.values():
            routes += channel.routes()
        admin = AdminAPI(self.settings.rest.admin_token, self.db, self.deliveries, self.commerce)
        return routes + admin.routes() + self.media.routes() + self.payment_webhook.routes()

    def urls(self, base: str) -> dict[str, list[str]]:
        """Every webhook URL by channel (and the payment provider's)."""
        out = {}
        for name in list(self.channels) + list(self.closed_channels):
            out[name] = [base + p for p in channel_class(name).url_paths()]
        out["stripe"] = [base + self.payment_webhook.path]
        return out

    @property
    def closed_endpoints(self) -> dict[str, list[str]]:
        """Webhooks that answer 403, with the settings that would open them."""
        c = self.settings.commerce
        missing = [
            name
            for name, ok in (
                ("HABLA_PAYMENTS=stripe", c.payments == "stripe"),
                ("STRIPE_API_KEY", bool(c.stripe_key)),
                ("STRIPE_WEBHOOK_SECRET", bool(c.stripe_webhook_secret)),
            )
            if not ok
        ]
        return self.closed_channels | ({"stripe": missing} if missing else {})

    async def start(self) -> None:
        s = self.settings
        tracker_store = make_tracker_store(s, self.db)
        await tracker_store.setup()
        await self.deliveries.setup()
        stores = self.stores = await COORDINATION[s.store.coordination](s, self.db)
        self._locks, self._inbox = stores.locks, stores.inbox
        if self.engine is None:
            model = (
                s.path(s.bot.model)
                if s.bot.model
                else await asyncio.to_thread(ensure_model, s.path(s.bot.dir), s.models_dir)
            )
            self.engine = (
                WorkerPoolEngine(model, s, s.engine.workers)
                if s.engine.workers
                else RasaEngine(model, endpoint_from_settings(s), s.engine.parse_cache)
            )
        await self.commerce.start()
        commerce_service.install(self.commerce)
        await self.engine.load()
        self.engine.bind_tracker_store(tracker_store)
        languages = s.languages
        detector = await asyncio.to_thread(DETECTORS[s.i18n.detector], languages)
        policy = LanguagePolicy(detector, languages, s.i18n.switch_confidence)
        authored = await asyncio.to_thread(AuthoredResponses.from_bot, s.path(s.bot.dir))
        self.translator = await start_translator(s, stores.translations)
        nlu_languages = [c.strip() for c in s.i18n.nlu_languages.split(",") if c.strip()]
        self.stt, self.tts = make_stt(s), make_tts(s)
        # speech models load in the background: the server answers text at once, and
        # a voice note that arrives first waits for its engine (engines start lazily)
        self._warmups = [
            asyncio.create_task(self._warm_up(e)) for e in (self.stt, self.tts) if e is not None
        ]
        await self.media.start()
        self._turn = Turn(
            [
                Acknowledge(),
                ResolveChoice(stores.choices),
                Transcribe(self.stt, s.voice, languages, stores.languages),
                DetectLanguage(policy, stores.languages),
                ReplyMode(stores.languages),
                TranslateForNLU(self.translator, nlu_languages, languages[0]),
                Dialogue(self.engine),
                LocalizeReplies(self.translator, authored, languages[0]),
                Speak(self.tts, s.voice, self.media, stores.languages, parse_voices(s)),
                Deliver(self.deliveries, stores.choices),
            ],
            self._locks,
            self.inbox,
        )
        for channel in self.channels.values():
            await channel.start()
        for name, missing in self.closed_channels.items():
            logger.warning(
                "channel '%s' is not configured (%s unset): its webhooks answer 403",
                name,
                ", ".join(missing),
            )
        await self.resume_pending()
        await self.commerce.outbox.start()  # its retries may push events into turns

    async def resume_pending(self) -> None:
        """Messages acknowledged before a crash or stop: process them now."""
        stale = SHARED_PENDING_STALE_S if isinstance(self.inbox, RedisInbox) else 0.0
        pending = await self.inbox.pending(older_than_s=stale)
        resumed = 0
        for msg in pending:
            channel = self.channels.get(msg.channel)
            if channel is not None and channel.output is not None:
                self._queue(msg, channel.output)
                resumed += 1
            else:
                await self.inbox.done(msg, "failed")
        if pending:
            logger.info("resumed %d of %d unfinished messages", resumed, len(pending))

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
        turn = self.turn
        self.dispatcher.submit(msg.conversation_id, lambda: turn.run(msg, output))

    async def accept(self, msg: InboundMessage, output: OutputChannel) -> bool:
        if not await self.inbox.accept(msg):
            return False
        logger.debug("accepted %s from %s", msg.message_id, mask_phone(msg.sender))
        self._queue(msg, output)
        return True

    async def run_turn(self, msg: InboundMessage, output: OutputChannel) -> list[BotReply]:
        ctx = await self.turn.run(msg, output)
        return list(ctx.replies)

    async def close(self) -> None:
        await self.dispatcher.close()
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
        commerce_service.install(None)
        for closable in (self._locks, self._inbox):
            if closable is not None:
                await closable.close()
        await self.db.close()

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.close()


RUNTIME = web.AppKey("runtime", Runtime)


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """Build the server. ``engine`` lets tests share one loaded model between apps."""
    runtime = Runtime(settings, engine)
    app = web.Application(client_max_size=1024**2)
    app.add_routes(runtime.routes())
    app.cleanup_ctx.append(runtime.lifespan)
    app[RUNTIME] = runtime  # for the CLI and tests; handlers never look it up
    return app
