"""Amazon Polly text-to-speech through boto3 (``SynthesizeSpeech``, the neural engine).

Polly answers raw 16-bit PCM at 16 kHz (``OutputFormat=pcm``), which is encoded here
as an OGG/Opus voice note (:func:`voice.audio.pcm_to_ogg_opus`), the format every
text-to-speech engine of habla returns: WhatsApp plays it as a voice note, and a phone
call decodes it to 8-kHz μ-law (``voice/calls.py``). Polly's own ``ogg_vorbis`` is not
Opus, which WhatsApp wants.

The voice is the one asked for, else the one configured for the language in
``HABLA_TTS_VOICES``, else :data:`VOICES` for the language's locale (``es`` → ``es-ES``
→ Lucia; ``language_codes`` picks another locale: ``{"pt": "pt-PT"}`` → Ines). Polly
voice ids carry no locale; a voice speaks its own language.

The text is sent as plain text (``TextType=text``: Polly reads ``<``, ``&`` and quotes
as they are, nothing needs escaping); a reply over Polly's 3,000 characters is split
at sentence ends and the pieces' audio joined. boto3 blocks, so each call runs on a
thread pool of the engine's own (``runtime/blocking.py``), bounded by the timeout from
settings, with botocore's own retries off (the turn retries transient errors).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from runtime.blocking import BlockingClient
from runtime.errors import HablaError, classify
from runtime.locales import to_locale
from runtime.settings import Settings, SettingsError
from voice.audio import pcm_to_ogg_opus
from voice.aws import AwsAccess, aws_error
from voice.stt.base import SpeechError
from voice.tts.base import Speech, TextToSpeech, parse_voices

SAMPLE_RATE = 16000  # Polly's PCM rates are 8000 and 16000
MAX_CHARS = 3000  # billed characters per SynthesizeSpeech request
# One neural voice per locale (all of them also exist in the standard engine except
# Sergio, Remi, Adriano, Daniel: male neural-only alternatives for es, fr, it, de).
VOICES: dict[str, str] = {
    "ar-AE": "Hala",
    "cmn-CN": "Zhiyu",
    "de-AT": "Hannah",
    "de-DE": "Vicki",
    "en-AU": "Olivia",
    "en-GB": "Amy",
    "en-IN": "Kajal",
    "en-US": "Joanna",
    "es-ES": "Lucia",
    "es-MX": "Mia",
    "es-US": "Lupe",
    "fr-CA": "Gabrielle",
    "fr-FR": "Lea",
    "it-IT": "Bianca",
    "ja-JP": "Kazuha",
    "ko-KR": "Seoyeon",
    "nl-NL": "Laura",
    "pt-BR": "Camila",
    "pt-PT": "Ines",
}
POLLY_LOCALES = {"zh": "cmn-CN", "ar": "ar-AE"}  # Polly's names where the shared table differs
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def split_text(text: str, limit: int = MAX_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after sentence ends
    (else at spaces, else anywhere)."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return [p for p in pieces if p]


def client_error(engine: str, error: Exception) -> SpeechError:
    """A botocore failure as a SpeechError (see :func:`voice.aws.aws_error`)."""
    if isinstance(error, ClientError):
        info: dict[str, Any] = error.response.get("Error", {})
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return aws_error(engine, str(info.get("Code", "")), status, str(info.get("Message", "")))
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return SpeechError(f"{engine}: credentials: {error}")
    mapped = classify(error, engine)  # timeouts and connection failures are transient
    return SpeechError(mapped.reason, transient=mapped.transient)


class _Calls(BlockingClient):
    name = "polly"

    def map_error(self, error: Exception) -> HablaError | None:
        if isinstance(error, (ClientError, BotoCoreError)):
            return client_error(self.name, error)
        return None


class PollyTTS(TextToSpeech):
    name = "polly"

    @classmethod
    def from_settings(cls, settings: Settings) -> PollyTTS:
        return cls(
            access=AwsAccess.from_settings(settings, settings.voice.polly_endpoint_url),
            voices=parse_voices(settings),
            timeout_s=settings.send.timeout_s,
        )

    def __init__(
        self,
        *,
        access: AwsAccess,
        voices: Mapping[str, str] | None = None,
        language_codes: Mapping[str, str] | None = None,
        engine: str = "neural",
        timeout_s: float = 15.0,
    ) -> None:
        if not access.region:
            raise SettingsError(["AWS_REGION is required for the polly text-to-speech engine"])
        self.access = access
        self.voices = {k.lower(): v for k, v in (voices or {}).items()}
        self.language_codes = dict(language_codes or {})
        self.engine = engine
        self.calls = _Calls(timeout_s=timeout_s)
        self.client: Any = None

    def _client(self) -> Any:
        a = self.access
        keys = (
            {
                "aws_access_key_id": a.access_key_id,
                "aws_secret_access_key": a.secret_access_key,
                "aws_session_token": a.session_token or None,
            }
            if a.has_keys
            else {}
        )
        config = Config(
            retries={"total_max_attempts": 1},  # the turn retries transient errors
            connect_timeout=self.calls.timeout_s,
            read_timeout=self.calls.timeout_s,
        )
        return boto3.session.Session().client(
            "polly",
            region_name=a.region,
            endpoint_url=a.endpoint_url or None,
            verify=a.ca_bundle or None,
            config=config,
            **keys,
        )

    async def start(self) -> None:
        if self.client is None:
            # building a boto3 client reads its service model from disk: off the loop
            self.client = await asyncio.to_thread(self._client)

    async def close(self) -> None:
        await self.calls.close_pool()
        if self.client is not None:
            client, self.client = self.client, None
            await asyncio.to_thread(client.close)

    def voice_for(self, language: str) -> str:
        """The configured voice for ``language``, else Polly's for its locale."""
        if voice := self.voices.get(language.lower()):
            return voice
        locale = to_locale(language, {**POLLY_LOCALES, **self.language_codes})
        if voice := VOICES.get(locale):
            return voice
        prefix = locale.split("-", 1)[0].lower() + "-"
        return next((v for loc, v in VOICES.items() if loc.lower().startswith(prefix)), "")

    async def synthesize(self, text: str, language: str, voice: str = "") -> Speech:
        if not text.strip():
            raise SpeechError(f"{self.name}: nothing to say (empty text)")
        voice = voice or self.voice_for(language)
        if not voice:
            raise SpeechError(f"{self.name}: no voice for {language!r} (set HABLA_TTS_VOICES)")
        if self.client is None:
            await self.start()
        pcm = bytearray()
        for piece in split_text(text):
            try:
                pcm += await self.calls.call(self._synthesize, piece, voice)
            except SpeechError:
                raise
            except HablaError as e:  # the call's timeout
                raise SpeechError(e.reason, transient=e.transient) from e
        samples = np.frombuffer(bytes(pcm[: len(pcm) // 2 * 2]), dtype="<i2")
        if not len(samples):
            raise SpeechError(f"{self.name}: no audio in the answer", transient=True)
        audio = await asyncio.to_thread(pcm_to_ogg_opus, samples.astype(np.int16), SAMPLE_RATE)
        return Speech(
            audio=audio,
            content_type="audio/ogg",
            duration_s=len(samples) / SAMPLE_RATE,
            engine=self.name,
            voice=voice,
        )

    def _synthesize(self, text: str, voice: str) -> bytes:
        """One ``SynthesizeSpeech`` call and its audio (blocking; the pool's thread)."""
        response = self.client.synthesize_speech(
            Engine=self.engine,
            OutputFormat="pcm",
            SampleRate=str(SAMPLE_RATE),
            Text=text,
            TextType="text",
            VoiceId=voice,
        )
        stream = response["AudioStream"]
        try:
            return bytes(stream.read())
        finally:
            stream.close()
