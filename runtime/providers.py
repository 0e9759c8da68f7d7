"""Every provider habla knows, by the name used in settings: one hop to any adapter.

Adding a provider is one new file (a class with ``from_settings``, under its family's
base class) plus one line here. The settings (``runtime/settings.py``) take their
allowed values from these registries; the composition root (``habla/wiring.py``)
builds the chosen ones. Entries are ``"module:Class"`` strings: nothing is imported
until chosen, and this core module depends on no adapter.
"""

from __future__ import annotations

from runtime.registry import Registry

# channels/base.py InputChannel: the webhook in, an OutputChannel to answer
CHANNELS = Registry(
    "channel",
    {
        "rest": "channels.rest:RestChannel",
        "twilio": "channels.twilio:TwilioChannel",
        "whatsapp": "channels.whatsapp:WhatsAppChannel",
        "twilio_voice": "channels.twilio_voice:TwilioVoiceChannel",
    },
)

# voice/stt/base.py SpeechToText
STT = Registry(
    "speech-to-text engine",
    {
        "whisper": "voice.stt.whisper:WhisperSTT",
        "google": "voice.stt.google:GoogleSTT",
        "azure": "voice.stt.azure:AzureSTT",
        "transcribe": "voice.stt.transcribe:TranscribeSTT",
    },
    off=("off",),
)

# voice/tts/base.py TextToSpeech
TTS = Registry(
    "text-to-speech engine",
    {
        "espeak": "voice.tts.espeak:EspeakTTS",
        "google": "voice.tts.google:GoogleTTS",
        "azure": "voice.tts.azure:AzureTTS",
        "polly": "voice.tts.polly:PollyTTS",
    },
    off=("off",),
)

# i18n/detect.py Detector
LANGUAGE_DETECTORS = Registry(
    "language detector",
    {
        "lingua": "i18n.detect:LinguaDetector",
        "langdetect": "i18n.detect:LangdetectDetector",
    },
)

# i18n/translation.py Translator
TRANSLATORS = Registry(
    "translator",
    {
        "google": "i18n.providers.google:GoogleTranslator",
        "azure": "i18n.providers.azure:AzureTranslator",
        "deepl": "i18n.providers.deepl:DeepLTranslator",
        "libretranslate": "i18n.providers.libretranslate:LibreTranslateTranslator",
    },
    off=("",),
)

# commerce/crm/base.py CRM
CRMS = Registry(
    "CRM",
    {
        "hubspot": "commerce.crm.hubspot:HubSpotCRM",
        "salesforce": "commerce.crm.salesforce:SalesforceCRM",
        "pipedrive": "commerce.crm.pipedrive:PipedriveCRM",
        "zoho": "commerce.crm.zoho:ZohoCRM",
    },
    off=("",),
)

# commerce/payments/base.py Payments
PAYMENTS = Registry(
    "payment provider",
    {
        "stripe": "commerce.payments.stripe:StripePayments",
        "paypal": "commerce.payments.paypal:PayPalPayments",
    },
    off=("",),
)

# commerce/orders.py OrderStore
ORDER_STORES = Registry(
    "order store",
    {
        "sqlite": "commerce.orders:SQLiteOrderStore",
        "mongo": "commerce.mongo:MongoOrderStore",
    },
)

# Rasa's TrackerStore (nlu/tracker_store.py): conversation state
TRACKER_STORES = Registry(
    "tracker store",
    {
        "sqlite": "nlu.tracker_store:SQLiteTrackerStore",
        "memory": "nlu.tracker_store:MemoryTrackerStore",
        "mongo": "nlu.mongo_tracker_store:MongoTrackerStore",
    },
)

# runtime/coordination.py Coordination: locks, inbox, choices, languages, translations
COORDINATION = Registry(
    "coordination backend",
    {
        "embedded": "runtime.coordination:EmbeddedCoordination",
        "redis": "runtime.coordination:RedisCoordination",
    },
)

ALL = (
    CHANNELS,
    STT,
    TTS,
    LANGUAGE_DETECTORS,
    TRANSLATORS,
    CRMS,
    PAYMENTS,
    ORDER_STORES,
    TRACKER_STORES,
    COORDINATION,
)
