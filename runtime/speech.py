"""What a phone channel needs from the speech engines, as the core sees it.

A streamed call (``channels/twilio_media.py``) hands the caller's μ-law audio to a
:class:`CallListener` (voice activity detection, one per call) and gets utterances
back; :class:`CallSpeech` transcribes them and turns replies into μ-law audio. The
implementation lives in ``voice/calls.py`` and is handed to the channel by the
composition root, so channels import no speech engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SpeechOnset:
    """The caller started speaking (enough voiced audio: the barge-in moment)."""

    at_s: float  # seconds into the call's audio when it was decided


@dataclass(frozen=True)
class Utterance:
    """The caller stopped speaking: what they said, as 16 kHz 16-bit PCM."""

    pcm16k: bytes
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Heard:
    text: str
    language: str
    confidence: float


class CallListener(Protocol):
    """One call's voice activity detection. CPU work: call it off the event loop."""

    def feed(self, ulaw: bytes) -> list[SpeechOnset | Utterance]: ...

    def flush(self) -> list[SpeechOnset | Utterance]: ...


class CallSpeech(Protocol):
    def listener(self) -> CallListener: ...

    async def transcribe(self, utterance: Utterance, languages: Sequence[str]) -> Heard:
        """Raises a HablaError (SpeechError) when the engine fails."""
        ...

    async def speak(self, text: str, language: str) -> list[bytes]:
        """``text`` as μ-law 8 kHz mono audio, in 20 ms frames (160 bytes each, the
        last padded with silence). Raises a HablaError (SpeechError) on failure."""
        ...
