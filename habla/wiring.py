"""The one place that builds habla from its settings.

The server (``habla/server.py``), the CLI (``habla/cli.py``), the engine worker
processes (:func:`worker_engine`) and the in-process actions all get their parts from
here. Providers are looked up by name in the registries of ``runtime/providers.py``
and build themselves (``from_settings``); this module only decides what goes where.

Read a turn's stages top to bottom in :func:`build_turn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from channels.base import ChannelServices, InputChannel
from commerce.crm.base import CRM
from commerce.mongo import motor_client
from commerce.orders import OrderStore
from commerce.outbox import MongoJobs
from commerce.payments.base import Payments
from commerce.service import Commerce
from habla.analytics import Analytics
from i18n import reviewed as reviewed_translations
from i18n.detect import Detector
from i18n.language import LanguagePolicy
from i18n.reviewed import ReviewedTranslations
from i18n.stages import AuthoredResponses, DetectLanguage, LocalizeReplies, TranslateForNLU
from i18n.translation import CachingTranslator, Translator
from nlu.actions import InProcessActionEndpoint
from nlu.engine import Engine, RasaEngine
from nlu.pool import WorkerPoolEngine
from nlu.training import ensure_model
from runtime import providers
from runtime.coordination import Coordination
from runtime.deliveries import DeliveryLog, MongoDeliveryLog, SQLiteDeliveryLog
from runtime.media import MediaHost
from runtime.messages import BotReply
from runtime.registry import Registry, UnknownProvider
from runtime.settings import Settings, SettingsError
from runtime.sqlite import SQLite
from runtime.turn import (
    Acknowledge,
    Deliver,
    DeliveryPolicy,
    Dialogue,
    ResolveChoice,
    RetryPolicy,
    Turn,
    TurnContext,
)
from voice.stages import ReplyMode, Speak, Transcribe
from voice.stt.base import SpeechToText
from voice.tts.base import TextToSpeech, parse_voices

logger = logging.getLogger(__name__)


def database(settings: Settings) -> SQLite:
    """The embedded SQLite file every part on this machine shares."""
    return SQLite(settings.data_dir / "habla.sqlite3")


# ---------------------------------------------------------------- providers


def _load(registry: Registry, name: str, base: type) -> Any:
    """The class a setting names (a bad name is a settings error)."""
    try:
        return registry.load(name, base)
    except UnknownProvider as e:
        raise SettingsError([str(e)]) from e


def _chosen(registry: Registry, name: str, base: type) -> Any:
    """Like :func:`_load`, or None when the setting chooses none (``""``, ``off``)."""
    return None if registry.is_off(name) else _load(registry, name, base)


async def build_coordination(settings: Settings, db: SQLite) -> Coordination:
    cls = _load(providers.COORDINATION, settings.store.coordination, Coordination)
    return await cls.from_settings(settings, db)


def build_analytics(settings: Settings, db: SQLite) -> Analytics:
    """The operator's analytics: SQL on the embedded SQLite file (its own connection),
    and the stores kept in MongoDB read from there; Redis's inbox and the memory
    tracker store are named as left out."""
    s, c = settings.store, settings.commerce
    in_mongo = []
    if s.tracker_store == "mongo":
        in_mongo += ["events", "deliveries"]
    if c.order_store == "mongo":
        in_mongo += ["orders", "outbox"]
    away = ["events"] if s.tracker_store not in ("sqlite", "mongo") else []
    if s.coordination != "embedded":
        away.append("inbox")
    intents = [i.strip() for i in settings.rest.analytics_price_intents.split(",")]
    return Analytics(
        db.path,
        price_intents=[i for i in intents if i],
        unavailable=away,
        mongo=motor_client(c.mongo_url)[c.mongo_database] if in_mongo else None,
        in_mongo=in_mongo,
    )


def build_delivery_log(settings: Settings, db: SQLite) -> DeliveryLog:
    """Outbound messages and their statuses live with the conversations: in MongoDB
    when the tracker store is (several servers share them), else in the SQLite file."""
    if settings.store.tracker_store != "mongo":
        return SQLiteDeliveryLog(db)
    c = settings.commerce
    return MongoDeliveryLog(motor_client(c.mongo_url)[c.mongo_database])


def build_tracker_store(settings: Settings, db: SQLite) -> Any:
    from rasa.core.tracker_store import TrackerStore

    cls = _load(providers.TRACKER_STORES, settings.store.tracker_store, TrackerStore)
    return cls.from_settings(settings, db)


def build_stt(settings: Settings) -> SpeechToText | None:
    cls = _chosen(providers.STT, settings.voice.stt, SpeechToText)
    return cls.from_settings(settings) if cls else None


def build_tts(settings: Settings) -> TextToSpeech | None:
    cls = _chosen(providers.TTS, settings.voice.tts, TextToSpeech)
    return cls.from_settings(settings) if cls else None


def build_detector(settings: Settings) -> Detector:
    cls = _load(providers.LANGUAGE_DETECTORS, settings.i18n.detector, Detector)
    return cls.from_settings(settings)


def build_translator(
    settings: Settings, session: aiohttp.ClientSession | None = None
) -> Translator | None:
    """The configured translator (not started), or None when none is set."""
    cls = _chosen(providers.TRANSLATORS, settings.i18n.translator, Translator)
    return cls.from_settings(settings, session) if cls else None


def build_crm(settings: Settings) -> CRM | None:
    cls = _chosen(providers.CRMS, settings.commerce.crm, CRM)
    return cls.from_settings(settings) if cls else None


def payment_names(settings: Settings) -> list[str]:
    """The configured payment providers (``HABLA_PAYMENTS=stripe,paypal``), default first."""
    names = (n.strip() for n in settings.commerce.payments.split(","))
    return [n for n in names if n and not providers.PAYMENTS.is_off(n)]


def build_payments(settings: Settings, name: str | None = None) -> Payments | None:
    """The payment provider ``name`` (default: the first configured), or None when
    none is configured."""
    names = payment_names(settings)
    chosen = name if name is not None else (names[0] if names else "")
    cls = _chosen(providers.PAYMENTS, chosen, Payments)
    return cls.from_settings(settings) if cls else None


async def build_order_store(settings: Settings, db: SQLite) -> OrderStore:
    cls = _load(providers.ORDER_STORES, settings.commerce.order_store, OrderStore)
    store: OrderStore = cls.from_settings(settings, db)
    await store.setup()
    return store


def build_commerce(settings: Settings, db: SQLite) -> Commerce:
    """Orders, payment links and CRM records (not started: :func:`start_commerce`). The
    outbox lives with the orders: in MongoDB when they do (every server retries it)."""
    jobs = None
    if settings.commerce.order_store == "mongo":
        c = settings.commerce
        jobs = MongoJobs(motor_client(c.mongo_url)[c.mongo_database])
    payments = [build_payments(settings, name) for name in payment_names(settings)]
    crm = build_crm(settings)
    return Commerce(settings, db, crm=crm, payments=[p for p in payments if p], jobs=jobs)


async def start_commerce(commerce: Commerce, settings: Settings, db: SQLite) -> Commerce:
    """Open its order store and clients (the server also starts the outbox's retry loop)."""
    await commerce.start(await build_order_store(settings, db))
    return commerce


def payment_webhooks(settings: Settings) -> list[str]:
    """The providers whose webhook is served (``/webhooks/<name>/webhook``): every
    built-in one (closed, 403, until configured) and any configured custom class."""
    names = list(providers.PAYMENTS.names)
    for name in payment_names(settings):
        cls = _load(providers.PAYMENTS, name, Payments)
        if cls.name not in names:
            names.append(cls.name)
    return names


def payments_missing(settings: Settings, provider: str = "stripe") -> list[str]:
    """What the payment webhook of ``provider`` needs before it accepts requests
    (empty: open)."""
    configured = payment_names(settings)
    for name in configured:
        cls = _load(providers.PAYMENTS, name, Payments)
        if cls.name == provider:
            return list(cls.missing_secrets(settings))
    cls = _load(providers.PAYMENTS, provider, Payments)
    wanted = ",".join([*configured, provider])
    return [f"HABLA_PAYMENTS={wanted}", *cls.missing_secrets(settings)]


def build_channels(
    settings: Settings, services: ChannelServices
) -> tuple[dict[str, InputChannel], dict[str, list[str]]]:
    """The open channels by name, and the closed ones with the secrets they miss."""
    open_: dict[str, InputChannel] = {}
    closed: dict[str, list[str]] = {}
    for name in filter(None, (n.strip() for n in settings.server.channels.split(","))):
        cls = _load(providers.CHANNELS, name, InputChannel)
        missing = cls.missing_secrets(settings)
        if missing:
            closed[cls.name] = missing
        else:
            open_[cls.name] = cls.from_settings(services)
    return open_, closed


def channel_class(name: str) -> type[InputChannel]:
    return _load(providers.CHANNELS, name, InputChannel)


# ---------------------------------------------------------------- the engine


def action_endpoint(settings: Settings, dependencies: Mapping[str, object]) -> Any:
    """An external action server if one is configured, else rasa_sdk in-process with
    ``dependencies`` (the Commerce service) handed to the actions that declare them."""
    if settings.bot.action_endpoint:
        from rasa.utils.endpoints import EndpointConfig

        return EndpointConfig(url=settings.bot.action_endpoint)
    return InProcessActionEndpoint(
        settings.bot.actions_module, settings.bot.action_error_response, dependencies
    )


def model_path(settings: Settings) -> Path:
    """The model to serve: the configured file, or trained from the bot's files."""
    if settings.bot.model:
        return settings.path(settings.bot.model)
    return ensure_model(settings.path(settings.bot.dir), settings.models_dir)


def build_engine(settings: Settings, model: Path, commerce: Commerce) -> Engine:
    """Rasa in this process, or in ``engine.workers`` processes (each built by
    :func:`worker_engine`). Load it, then bind the tracker store."""
    workers = engine_workers(settings)
    if workers:
        return WorkerPoolEngine(model, settings, workers, worker_engine)
    return rasa_engine(settings, model, commerce)


def rasa_engine(settings: Settings, model: Path, commerce: Commerce) -> RasaEngine:
    """Rasa in this process (the server's, or an engine worker's)."""
    endpoint = action_endpoint(settings, {"commerce": commerce})
    engine = settings.engine
    return RasaEngine(
        model,
        endpoint,
        engine.parse_cache,
        engine.flat_history,
        fast_load=engine.fast_load,
        graph_cache=settings.path(engine.graph_cache) if engine.graph_cache else None,
        tf_threads=engine.tf_threads,
        prediction_cache=engine.prediction_cache,
    )


def engine_workers(settings: Settings) -> int:
    """``engine.workers``, but at least one while streamed calls are open: a call's audio
    must never wait for Rasa on the event loop (bench/calls.py measures the loop's lag)."""
    channels = {n.strip() for n in settings.server.channels.split(",")}
    if settings.call.mode == "stream" and "twilio_voice" in channels:
        if not settings.engine.workers:
            logger.info("streamed calls: Rasa runs in an engine worker (HABLA_ENGINE_WORKERS=1)")
        return max(1, settings.engine.workers)
    return settings.engine.workers


@contextlib.asynccontextmanager
async def worker_engine(settings: Settings, model: Path) -> AsyncIterator[Engine]:
    """An engine worker process's own parts: the loaded model, its tracker store
    connection and the Commerce its actions use; all closed when the worker stops."""
    db = database(settings)
    commerce = await start_commerce(build_commerce(settings, db), settings, db)
    try:
        store = build_tracker_store(settings, db)
        await store.setup()
        engine = rasa_engine(settings, model, commerce)
        await engine.load()
        engine.bind_tracker_store(store)
        yield engine
        await engine.close()
        if hasattr(store, "close"):  # a client of its own (MongoDB)
            await store.close()
    finally:
        await commerce.close()
        await db.close()


# ---------------------------------------------------------------- the turn


@dataclass(frozen=True)
class TurnParts:
    """What the turn's stages are built from (the server owns their lifetimes)."""

    engine: Engine
    coordination: Coordination
    deliveries: DeliveryLog
    media: MediaHost
    translator: CachingTranslator | None
    stt: SpeechToText | None
    tts: TextToSpeech | None
    responses: Mapping[str, list[dict[str, Any]]]
    """The domain's responses (:func:`domain_responses`)."""


async def build_turn(settings: Settings, parts: TurnParts) -> Turn:
    """Every stage of a turn, in order."""
    s = settings
    languages = s.languages
    c = parts.coordination
    detector = await asyncio.to_thread(build_detector, s)
    policy = LanguagePolicy(detector, languages, s.i18n.switch_confidence)
    authored = AuthoredResponses(dict(parts.responses))
    files = await asyncio.to_thread(reviewed_translations.load_all, s.path(s.bot.dir))
    reviewed = ReviewedTranslations(parts.responses, files, languages[0])
    nlu_languages = [code.strip() for code in s.i18n.nlu_languages.split(",") if code.strip()]
    retry = DeliveryPolicy(s.send.retry_window_s, s.send.retry_backoff_s)
    deliver = Deliver(parts.deliveries, c.choices, c.inbox, retry)
    return Turn(
        answer=[
            Acknowledge(),
            Transcribe(parts.stt, s.voice, languages, c.languages),
            ResolveChoice(c.choices),  # after transcription: a spoken "two" picks too
            DetectLanguage(policy, c.languages),
            ReplyMode(c.languages),
            TranslateForNLU(parts.translator, nlu_languages, languages[0]),
            Dialogue(parts.engine),
            LocalizeReplies(parts.translator, authored, languages[0], reviewed),
        ],
        deliver=[
            Speak(parts.tts, s.voice, parts.media, c.languages, parse_voices(s)),
            deliver,
        ],
        locks=c.locks,
        inbox=c.inbox,
        retry=RetryPolicy(s.turn.attempts, s.turn.backoff_s, patience_s=s.turn.patience_s),
        error_reply=ErrorReplies(s.turn.error_response, parts.responses, c),
        sender=deliver,
    )


class ErrorReplies:
    """The reply to a turn that failed for good: the domain's ``turn.error_response``
    (``utter_error``) in the conversation's language, else a plain sentence; nothing
    when the setting is empty."""

    FALLBACK = "Sorry, something went wrong on our side. Please try again in a moment."

    def __init__(
        self,
        name: str,
        responses: Mapping[str, list[dict[str, Any]]],
        coordination: Coordination,
    ) -> None:
        self.texts = response_texts(responses, name) if name else {}
        self.default = (self.texts.get("") or self.FALLBACK) if name else ""
        self.coordination = coordination

    async def __call__(self, ctx: TurnContext) -> tuple[BotReply, ...]:
        if not self.default:
            return ()
        language: str | None = ctx.language
        if not language:
            try:
                language, _ = await self.coordination.languages.get(ctx.inbound.conversation_id)
            except Exception:
                language = None
        return (BotReply(text=self.texts.get(language or "", self.default)),)


def domain_responses(bot_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The bot's responses as Rasa's ``Domain.load`` reads them (the files of a domain
    folder merged; of a response in two files, the first walked wins), read before the
    server listens (blocking: run it in a thread).

    Only the YAML is read, not a ``Domain`` built: building one imports the module of
    every custom slot type (``nlu.sentiment.SentimentSlot`` imports Rasa's graph and so
    TensorFlow), which kept webhooks waiting 10 s at every start; the engine's load
    validates the whole domain moments later."""
    from rasa.shared.core.domain import ALL_DOMAIN_KEYS, KEY_RESPONSES
    from rasa.shared.data import is_likely_yaml_file
    from rasa.shared.utils.io import read_yaml_file

    path = bot_dir / "domain"
    if not path.is_dir():
        data = read_yaml_file(bot_dir / "domain.yml") or {}
        return dict(data.get(KEY_RESPONSES) or {})
    responses: dict[str, list[dict[str, Any]]] = {}
    for root, _, files in os.walk(path, followlinks=True):  # Domain.from_directory's order
        for name in files:
            file = Path(root, name)
            if not is_likely_yaml_file(file):
                continue
            data = read_yaml_file(file) or {}
            if isinstance(data, dict) and any(key in data for key in ALL_DOMAIN_KEYS):
                responses = {**(data.get(KEY_RESPONSES) or {}), **responses}
    return responses


def response_texts(responses: Mapping[str, list[dict[str, Any]]], name: str) -> dict[str, str]:
    """A response's first text per ``language`` condition ("" unconditioned), leaving
    out channel-specific variations."""
    texts: dict[str, str] = {}
    for variation in responses.get(name, []):
        if not variation.get("text") or variation.get("channel"):
            continue
        conditions = variation.get("condition") or []
        languages = [str(c.get("value")) for c in conditions if c.get("name") == "language"]
        texts.setdefault(languages[0] if languages else "", str(variation["text"]))
    return texts
