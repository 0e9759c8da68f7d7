"""Azure AI Speech text-to-speech through the official Speech SDK.

``region`` names the Azure resource's region; ``host`` replaces it with a URL (a
Speech container or a local fake: ``ws://127.0.0.1:5000``).

Replies come back as OGG/Opus (16, 24 or 48 kHz mono), which WhatsApp plays as a voice
note, synthesized from SSML whose ``xml:lang`` is the voice's locale. The voice is the
one asked for, else the one configured for the language in ``voices``, else
:data:`DEFAULT_VOICES`. The SDK blocks, so each synthesis runs in a worker thread with
a synthesizer of its own (a synthesizer works through one request at a time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import azure.cognitiveservices.speech as speechsdk

from runtime.settings import Settings
from voice.audio import ogg_opus_duration
from voice.stt.azure import cancellation_error, speech_config, to_locale
from voice.stt.base import SpeechError
from voice.tts.base import Speech, TextToSpeech, parse_voices

DEFAULT_VOICES: dict[str, str] = {
    "de": "de-DE-KatjaNeural",
    "en": "en-US-JennyNeural",
    "es": "es-ES-ElviraNeural",
    "fr": "fr-FR-DeniseNeural",
    "it": "it-IT-ElsaNeural",
    "pt": "pt-BR-FranciscaNeural",
}
_F = speechsdk.SpeechSynthesisOutputFormat
OUTPUT_FORMATS = {
    16000: _F.Ogg16Khz16BitMonoOpus,
    24000: _F.Ogg24Khz16BitMonoOpus,
    48000: _F.Ogg48Khz16BitMonoOpus,
}
_VOICE_LOCALE = re.compile(r"^([a-z]{2,3}-[A-Z]{2})-")


class AzureTTS(TextToSpeech):
    name = "azure"

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureTTS:
        v = settings.voice
        return cls(
            key=v.azure_key, region=v.azure_region, host=v.azure_host, voices=parse_voices(settings)
        )

    def __init__(
        self,
        *,
        key: str = "",
        region: str = "",
        host: str = "",
        voices: Mapping[str, str] | None = None,
        language_codes: Mapping[str, str] | None = None,
        sample_rate_hz: int = 16000,
        timeout_s: float = 30.0,
    ) -> None:
        if sample_rate_hz not in OUTPUT_FORMATS:
            raise ValueError(f"sample_rate_hz must be one of {sorted(OUTPUT_FORMATS)}")
        self.config = speech_config(key, region, host)
        self.config.set_speech_synthesis_output_format(OUTPUT_FORMATS[sample_rate_hz])
        self.voices = {**DEFAULT_VOICES, **{k.lower(): v for k, v in (voices or {}).items()}}
        self.language_codes = dict(language_codes or {})
        self.timeout_s = timeout_s

    def ssml(self, text: str, language: str, voice: str) -> str:
        m = _VOICE_LOCALE.match(voice)
        locale = m.group(1) if m else to_locale(language, self.language_codes)
        return (
            '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
            f"xml:lang={quoteattr(locale)}><voice name={quoteattr(voice)}>"
            f"{escape(text)}</voice></speak>"
        )

    async def synthesize(self, text: str, language: str, voice: str = "") -> Speech:
        if not text.strip():
            raise SpeechError(f"{self.name}: nothing to say (empty text)")
        voice = voice or self.voices.get(language.lower(), "")
        if not voice:
            raise SpeechError(f"{self.name}: no voice for {language!r} (set HABLA_TTS_VOICES)")
        ssml = self.ssml(text, language, voice)
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self._speak, ssml), self.timeout_s)
        except asyncio.TimeoutError:
            raise SpeechError(
                f"{self.name}: no audio in {self.timeout_s:g} s", transient=True
            ) from None
        if result.reason == speechsdk.ResultReason.Canceled:
            details = result.cancellation_details
            raise cancellation_error(self.name, details.error_code, details.error_details)
        audio = bytes(result.audio_data)
        duration = ogg_opus_duration(audio)
        if duration is None:
            raise SpeechError(f"{self.name}: the answer is not OGG/Opus", transient=True)
        return Speech(
            audio=audio,
            content_type="audio/ogg",
            duration_s=duration,
            engine=self.name,
            voice=voice,
        )

    def _speak(self, ssml: str) -> Any:
        synthesizer = speechsdk.SpeechSynthesizer(speech_config=self.config, audio_config=None)
        return synthesizer.speak_ssml_async(ssml).get()
