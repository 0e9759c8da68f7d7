"""Voice notes: speech-to-text and text-to-speech engines, registered by the name used
in settings (``HABLA_STT``, ``HABLA_TTS``). Adapters are imported only when chosen, so
an unused cloud SDK costs nothing at start-up."""

from __future__ import annotations

import importlib
from typing import Any

from runtime.settings import Settings, SettingsError
from voice.stt.base import SpeechToText
from voice.tts.base import TextToSpeech

STT_ENGINES = {
    "whisper": "voice.stt.whisper.WhisperSTT",
    "google": "voice.stt.google.GoogleSTT",
    "azure": "voice.stt.azure.AzureSTT",
}
TTS_ENGINES = {
    "espeak": "voice.tts.espeak.EspeakTTS",
    "google": "voice.tts.google.GoogleTTS",
    "azure": "voice.tts.azure.AzureTTS",
}


def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def parse_voices(settings: Settings) -> dict[str, str]:
    """``HABLA_TTS_VOICES`` ('es=es-ES-ElviraNeural,pt=...') as a mapping."""
    out = {}
    for item in filter(None, (p.strip() for p in settings.voice.voices.split(","))):
        lang, sep, voice = item.partition("=")
        if not sep or not lang.strip() or not voice.strip():
            raise SettingsError([f"voice.voices (HABLA_TTS_VOICES): {item!r} is not lang=voice"])
        out[lang.strip().lower()] = voice.strip()
    return out


def make_stt(settings: Settings) -> SpeechToText | None:
    v = settings.voice
    if v.stt == "off":
        return None
    cls = _load(STT_ENGINES[v.stt])
    if v.stt == "whisper":
        return cls(
            model_dir=str(settings.path(v.whisper_model_dir)) if v.whisper_model_dir else "",
            cache_dir=str(settings.models_dir / "whisper-base"),
            beam_size=v.whisper_beam_size,
            cpu_threads=v.whisper_threads,
        )
    if v.stt == "google":
        return cls(endpoint=v.google_endpoint)
    return cls(key=v.azure_key, region=v.azure_region, host=v.azure_host)


def make_tts(settings: Settings) -> TextToSpeech | None:
    v = settings.voice
    if v.tts == "off":
        return None
    cls = _load(TTS_ENGINES[v.tts])
    voices = parse_voices(settings)
    if v.tts == "espeak":
        return cls(voices=voices)
    if v.tts == "google":
        return cls(endpoint=v.google_endpoint, voices=voices)
    return cls(key=v.azure_key, region=v.azure_region, host=v.azure_host, voices=voices)
