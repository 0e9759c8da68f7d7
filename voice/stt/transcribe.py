"""Amazon Transcribe speech-to-text through its official streaming SDK
(``amazon-transcribe``: ``TranscribeStreamingClient.start_stream_transcription``,
HTTP/2 event stream over awscrt, SigV4-signed request and audio events).

Audio: every voice note is decoded to 16 kHz, 16-bit mono PCM (``voice/audio.py``;
a 16-kHz 16-bit mono WAV, what a phone call's utterance arrives as, is read without
ffmpeg) and sent as ``pcm`` in audio events of :data:`CHUNK_BYTES`, then the end of
the stream; the final (non-partial) results are joined.

Language: with several bot languages, streaming language identification
(``identify_language``) among up to :data:`MAX_LANGUAGE_OPTIONS` of them as locales
(one per language, the first as ``preferred_language``); with one, that
``language_code``. The SDK (0.6.4) drops the identification scores, so a transcript's
``language_confidence`` is 0 when Transcribe picked the language (1 when it was fixed).

Endpoint: AWS's regional one, or ``endpoint_url`` (``https://``: the SDK negotiates
HTTP/2 through TLS ALPN only). ``ca_bundle`` replaces the system's trust store (the
SDK has no option for it, so its session's TLS context is replaced: pinned to
amazon-transcribe 0.6).

Time allowed: ``timeout_s`` plus the note's duration (the service transcribes at about
real time).
"""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from amazon_transcribe.auth import StaticCredentialResolver
from amazon_transcribe.client import TranscribeStreamingClient
from amazon_transcribe.endpoints import StaticEndpointResolver
from amazon_transcribe.exceptions import (
    CredentialsException,
    HTTPException,
    SDKError,
    ServiceException,
    UnknownServiceException,
)
from awscrt import io as crt_io
from awscrt.exceptions import AwsCrtError

from runtime.locales import to_language, to_locale
from runtime.settings import Settings, SettingsError
from voice.audio import decode_to_pcm16k
from voice.aws import AwsAccess, aws_error
from voice.stt.base import SpeechError, SpeechToText, Transcript

SAMPLE_RATE = 16000
BYTES_PER_SECOND = 2 * SAMPLE_RATE
CHUNK_BYTES = 8 * 1024  # 256 ms of audio per event (the SDK's limit: 32 KB)
MAX_LANGUAGE_OPTIONS = 5
UNRATED = 1.0  # a transcript without word confidences counts as trusted


def pcm16k(audio: bytes, content_type: str) -> bytes:
    """A voice note as 16 kHz 16-bit little-endian mono PCM (blocking: ffmpeg for all
    but a WAV that already is that). AudioError (permanent) when it cannot be read."""
    if content_type.split(";", 1)[0].strip().lower() in ("audio/wav", "audio/x-wav", "audio/wave"):
        try:
            with wave.open(io.BytesIO(audio)) as w:
                if (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2):
                    return w.readframes(w.getnframes())
        except (wave.Error, EOFError):
            pass  # let ffmpeg read it
    samples, _ = decode_to_pcm16k(audio, content_type)
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def stream_error(engine: str, error: Exception) -> SpeechError:
    """A failure of the streaming SDK or its HTTP/2 connection as a SpeechError."""
    if isinstance(error, UnknownServiceException):
        return aws_error(engine, str(error.error_code), error.status_code, error.message)
    if isinstance(error, ServiceException):  # BadRequest, LimitExceeded, InternalFailure...
        status = int(getattr(error, "status_code", 0) or getattr(error, "error", 0) or 0)
        message = str(getattr(error, "message", error))
        return aws_error(engine, type(error).__name__, status, message)
    if isinstance(error, CredentialsException):
        return SpeechError(f"{engine}: credentials: {error}")
    if isinstance(error, AwsCrtError):
        # socket and HTTP/2 failures are worth retrying; TLS trust and credentials are not
        permanent = error.name.startswith(("AWS_IO_TLS", "AWS_AUTH"))
        return SpeechError(f"{engine}: {error.name}: {error.message}", transient=not permanent)
    if isinstance(error, HTTPException):
        return SpeechError(f"{engine}: {error}", transient="HTTP/2" not in str(error))
    return SpeechError(f"{engine}: {type(error).__name__}: {error}", transient=True)


class TranscribeSTT(SpeechToText):
    name = "transcribe"

    @classmethod
    def from_settings(cls, settings: Settings) -> TranscribeSTT:
        return cls(
            access=AwsAccess.from_settings(settings, settings.voice.transcribe_endpoint_url),
            timeout_s=settings.send.timeout_s,
        )

    def __init__(
        self,
        *,
        access: AwsAccess,
        language_codes: Mapping[str, str] | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        problems = []
        if not access.region:
            problems.append("AWS_REGION is required for the transcribe speech-to-text engine")
        if access.endpoint_url and not access.endpoint_url.startswith("https://"):
            problems.append(
                "the transcribe endpoint must be https:// (HTTP/2 over TLS), "
                f"not {access.endpoint_url}"
            )
        if problems:
            raise SettingsError(problems)
        self.access = access
        self.language_codes = dict(language_codes or {})
        self.timeout_s = timeout_s
        self.client: TranscribeStreamingClient | None = None

    async def start(self) -> None:
        if self.client is not None:
            return
        a = self.access
        client = TranscribeStreamingClient(
            region=a.region,
            endpoint_resolver=StaticEndpointResolver(a.endpoint_url) if a.endpoint_url else None,
            credential_resolver=(
                StaticCredentialResolver(
                    a.access_key_id, a.secret_access_key, a.session_token or None
                )
                if a.has_keys
                else None  # the SDK's default chain (awscrt's)
            ),
        )
        if a.ca_bundle:
            options = crt_io.TlsContextOptions()
            options.override_default_trust_store_from_path(None, a.ca_bundle)
            client._session_manager._tls_ctx = crt_io.ClientTlsContext(options)
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            for connection in list(client._session_manager._connections.values()):
                connection.close()

    def locales(self, languages: Sequence[str]) -> list[str]:
        """One locale per language (Transcribe takes one dialect per language)."""
        by_language: dict[str, str] = {}
        for code in languages:
            locale = to_locale(code, self.language_codes)
            by_language.setdefault(to_language(locale) or locale, locale)
        return list(by_language.values())[:MAX_LANGUAGE_OPTIONS] or [
            to_locale("en", self.language_codes)
        ]

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        if not audio:
            raise SpeechError(f"{self.name}: no audio (0 bytes)")
        pcm = await asyncio.to_thread(pcm16k, audio, content_type)
        if not pcm:
            raise SpeechError(f"{self.name}: no audio decoded")
        locales = self.locales(languages)
        duration = len(pcm) / BYTES_PER_SECOND
        allowed = self.timeout_s + duration
        if self.client is None:
            await self.start()
        try:
            results = await asyncio.wait_for(self._stream(pcm, locales), allowed)
        except asyncio.TimeoutError:
            raise SpeechError(
                f"{self.name}: no answer in {allowed:.0f} s", transient=True
            ) from None
        except (SDKError, AwsCrtError, RuntimeError) as e:
            raise stream_error(self.name, e) from e
        return self.transcript(results, locales, duration)

    async def _stream(self, pcm: bytes, locales: list[str]) -> list[Any]:
        """Send all of ``pcm``; the final results."""
        assert self.client is not None
        options: dict[str, Any] = {"media_sample_rate_hz": SAMPLE_RATE, "media_encoding": "pcm"}
        if len(locales) > 1:
            options.update(
                language_code=None,
                identify_language=True,
                language_options=locales,
                preferred_language=locales[0],
            )
        else:
            options.update(language_code=locales[0])
        stream = await self.client.start_stream_transcription(**options)

        async def send() -> None:
            for start in range(0, len(pcm), CHUNK_BYTES):
                await stream.input_stream.send_audio_event(
                    audio_chunk=pcm[start : start + CHUNK_BYTES]
                )
            await stream.input_stream.end_stream()

        sender = asyncio.create_task(send())
        results: list[Any] = []
        try:
            async for event in stream.output_stream:
                transcript = getattr(event, "transcript", None)
                if transcript is not None:
                    results.extend(r for r in transcript.results if not r.is_partial)
            await sender
        finally:
            if not sender.done():
                sender.cancel()
        return results

    def transcript(self, results: Sequence[Any], locales: list[str], duration: float) -> Transcript:
        """Best alternatives joined; the language of the first result with words."""
        texts: list[str] = []
        confidences: list[float] = []
        picked = ""
        for result in results:
            if not result.alternatives:
                continue
            best = result.alternatives[0]
            text = (best.transcript or "").strip()
            if not text:
                continue
            texts.append(text)
            picked = picked or (result.language_code or "")
            confidences.extend(
                float(item.confidence)
                for item in best.items or []
                if item.item_type == "pronunciation" and item.confidence is not None
            )
        text = " ".join(texts)
        identified = len(locales) > 1
        return Transcript(
            text=text,
            language=to_language(picked or locales[0]) if text else None,
            confidence=(
                (sum(confidences) / len(confidences) if confidences else UNRATED) if text else 0.0
            ),
            duration_s=duration,
            engine=self.name,
            language_confidence=(0.0 if identified else 1.0) if text else 0.0,
        )
