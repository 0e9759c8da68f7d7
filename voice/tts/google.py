"""Google Cloud Text-to-Speech v1 through the official async gRPC client.

With ``endpoint`` (host:port) it talks to that endpoint over an insecure channel (an
emulator or a local fake); otherwise to Google with Application Default Credentials.

Replies come back as OGG/Opus, which WhatsApp plays as a voice note. The voice is the
one asked for, else the one configured for the language in ``voices``, else Google's
default for the language's locale (:data:`voice.stt.google.LOCALES`). A voice name
(``pt-PT-Wavenet-A``) carries its own locale, which is then the ``language_code``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from google.cloud import texttospeech_v1 as tts
from google.cloud.texttospeech_v1.services.text_to_speech.transports import (
    TextToSpeechGrpcAsyncIOTransport,
)

from runtime.settings import Settings
from voice.audio import ogg_opus_duration
from voice.stt.base import SpeechError
from voice.stt.google import CLIENT_ERRORS, grpc_client, speech_error, to_locale
from voice.tts.base import Speech, TextToSpeech, parse_voices

_VOICE_LOCALE = re.compile(r"^([a-z]{2,3}-[A-Z]{2})-")


def voice_locale(voice: str) -> str | None:
    """``es-ES-Neural2-A`` → ``es-ES``; None for a name without a locale prefix."""
    m = _VOICE_LOCALE.match(voice)
    return m.group(1) if m else None


class GoogleTTS(TextToSpeech):
    name = "google"

    @classmethod
    def from_settings(cls, settings: Settings) -> GoogleTTS:
        return cls(endpoint=settings.voice.google_endpoint, voices=parse_voices(settings))

    def __init__(
        self,
        *,
        endpoint: str = "",
        voices: Mapping[str, str] | None = None,
        language_codes: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.voices = {k.lower(): v for k, v in (voices or {}).items()}
        self.language_codes = dict(language_codes or {})
        self.timeout_s = timeout_s
        self.client: tts.TextToSpeechAsyncClient | None = None

    async def start(self) -> None:
        if self.client is not None:
            return
        self.client = grpc_client(
            tts.TextToSpeechAsyncClient, TextToSpeechGrpcAsyncIOTransport, self.endpoint, self.name
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.transport.close()
            self.client = None

    async def synthesize(self, text: str, language: str, voice: str = "") -> Speech:
        if not text.strip():
            raise SpeechError(f"{self.name}: nothing to say (empty text)")
        voice = voice or self.voices.get(language.lower(), "")
        locale = voice_locale(voice) or to_locale(language, self.language_codes)
        if self.client is None:
            await self.start()
        assert self.client is not None
        try:
            response = await self.client.synthesize_speech(
                input=tts.SynthesisInput(text=text),
                voice=tts.VoiceSelectionParams(language_code=locale, name=voice),
                audio_config=tts.AudioConfig(audio_encoding=tts.AudioEncoding.OGG_OPUS),
                retry=None,
                timeout=self.timeout_s,
            )
        except CLIENT_ERRORS as e:
            raise speech_error(self.name, e) from e
        audio = response.audio_content
        duration = ogg_opus_duration(audio)
        if duration is None:
            raise SpeechError(f"{self.name}: the answer is not OGG/Opus", transient=True)
        return Speech(
            audio=audio,
            content_type="audio/ogg",
            duration_s=duration,
            engine=self.name,
            voice=voice or locale,
        )
