"""Speech-to-text: one base class, adapters registered by the name used in settings."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from runtime import metrics
from runtime.errors import SpeechError as SpeechError  # re-exported for adapters
from runtime.settings import Settings


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None  # ISO 639-1 ("es"), None when the engine could not tell
    confidence: float  # 0..1
    duration_s: float  # audio duration
    engine: str
    language_confidence: float = 0.0  # 0..1, how sure the engine is of ``language``


class SpeechToText(ABC):
    """Transcribe one voice note. Implementations never block the event loop."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> SpeechToText:
        """Build from the settings (registered in runtime/providers.py STT)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients or load models."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and models."""

    @abstractmethod
    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        """Transcribe ``audio`` (as received: OGG/Opus, AMR, MP3, WAV...).

        ``languages`` are the bot's languages as ISO 639-1 codes, most likely first;
        engines restrict or bias language identification to them.
        """

    async def measured(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        """:meth:`transcribe`, timed and counted (``habla_speech_*{kind="stt"}``):
        what the voice-note stage and calls call."""
        began = time.perf_counter()
        try:
            transcript = await self.transcribe(audio, content_type, languages)
        except Exception:
            metrics.speech_failed("stt", self.name)
            raise
        metrics.speech("stt", self.name, time.perf_counter() - began, transcript.duration_s)
        return transcript
