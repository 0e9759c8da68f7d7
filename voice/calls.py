"""Speech for streamed phone calls: the caller's μ-law audio → utterances (Silero VAD)
→ text (the configured speech-to-text engine); replies → speech (the configured
text-to-speech engine) → μ-law 8 kHz. Implements ``runtime/speech.py`` for the
channel; the composition root builds it with the engines voice notes use."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.errors import SpeechError
from runtime.speech import CallListener, Heard, SpeechOnset, Utterance
from voice.audio import AudioError, decode_to_pcm16k
from voice.stt.base import SpeechToText
from voice.telephony import frame_ulaw, pcm_to_ulaw8k, ulaw8k_to_pcm16k
from voice.tts.base import TextToSpeech
from voice.vad import SpeechEnded, SpeechStarted, UtteranceSegmenter


class SegmentingListener:
    """μ-law frames in, onsets and utterances out (one per call; not thread-safe)."""

    def __init__(self, min_speech_ms: int, min_silence_ms: int) -> None:
        self.segmenter = UtteranceSegmenter(
            min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms
        )
        self.state: Any = None

    def feed(self, ulaw: bytes) -> list[SpeechOnset | Utterance]:
        pcm, self.state = ulaw8k_to_pcm16k(ulaw, self.state)
        return self._events(self.segmenter.feed(pcm))

    def flush(self) -> list[SpeechOnset | Utterance]:
        return self._events(self.segmenter.flush())

    @staticmethod
    def _events(events: Sequence[Any]) -> list[SpeechOnset | Utterance]:
        out: list[SpeechOnset | Utterance] = []
        for event in events:
            if isinstance(event, SpeechStarted):
                out.append(SpeechOnset(at_s=event.at))
            elif isinstance(event, SpeechEnded):
                samples = np.clip(event.audio, -1.0, 1.0)
                pcm = (samples * 32767.0).astype("<i2").tobytes()
                out.append(Utterance(pcm16k=pcm, start_s=event.start, end_s=event.end))
        return out


def wav16k(pcm16k: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm16k)
    return buffer.getvalue()


class PhoneSpeech:
    def __init__(
        self,
        stt: SpeechToText,
        tts: TextToSpeech,
        voices: Mapping[str, str],
        *,
        min_speech_ms: int = 250,
        min_silence_ms: int = 600,
    ) -> None:
        self.stt, self.tts, self.voices = stt, tts, dict(voices)
        self.min_speech_ms, self.min_silence_ms = min_speech_ms, min_silence_ms

    def listener(self) -> CallListener:
        return SegmentingListener(self.min_speech_ms, self.min_silence_ms)

    async def transcribe(self, utterance: Utterance, languages: Sequence[str]) -> Heard:
        transcript = await self.stt.measured(wav16k(utterance.pcm16k), "audio/wav", languages)
        return Heard(transcript.text.strip(), transcript.language or "", transcript.confidence)

    async def speak(self, text: str, language: str) -> list[bytes]:
        speech = await self.tts.measured(text, language, self.voices.get(language, ""))
        try:
            samples, _ = await asyncio.to_thread(
                decode_to_pcm16k, speech.audio, speech.content_type
            )
        except AudioError as e:
            raise SpeechError(f"the reply's audio could not be decoded: {e}") from e
        ulaw = await asyncio.to_thread(pcm_to_ulaw8k, samples, 16000)
        return frame_ulaw(ulaw)
