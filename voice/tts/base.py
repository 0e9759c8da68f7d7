"""Text-to-speech: one base class, adapters registered by the name used in settings."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from runtime import metrics
from runtime.settings import Settings, language_map


@dataclass(frozen=True)
class Speech:
    audio: bytes  # OGG/Opus, mono (WhatsApp plays it as a voice note)
    content_type: str  # "audio/ogg"
    duration_s: float
    engine: str
    voice: str


def parse_voices(settings: Settings) -> dict[str, str]:
    """``HABLA_TTS_VOICES`` ('es=es-ES-ElviraNeural,pt=...') as a mapping."""
    return language_map(settings.voice.voices, "voice.voices (HABLA_TTS_VOICES)")


class TextToSpeech(ABC):
    """Synthesize one reply. Implementations never block the event loop."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> TextToSpeech:
        """Build from the settings (registered in runtime/providers.py TTS)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients or load voices."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    @abstractmethod
    async def synthesize(self, text: str, language: str, voice: str = "") -> Speech:
        """Speak ``text`` in ``language`` (ISO 639-1); ``voice`` overrides the default
        voice for that language (an engine-specific name). Raises SpeechError."""

    async def measured(self, text: str, language: str, voice: str = "") -> Speech:
        """:meth:`synthesize`, timed and counted (``habla_speech_*{kind="tts"}``):
        what the voice-reply stage and calls call."""
        began = time.perf_counter()
        try:
            speech = await self.synthesize(text, language, voice)
        except Exception:
            metrics.speech_failed("tts", self.name)
            raise
        metrics.speech("tts", self.name, time.perf_counter() - began, speech.duration_s)
        return speech
