"""Google Cloud Speech-to-Text v1 through the official async gRPC client.

With ``endpoint`` (host:port) it talks to that endpoint over an insecure channel (an
emulator or a local fake); otherwise to Google with Application Default Credentials.

The voice note is sent as received, no conversion:

* OGG/Opus (WhatsApp voice notes) as ``OGG_OPUS``. Google needs the rate to decode at
  (8, 12, 16, 24 or 48 kHz): the input rate in the stream's ``OpusHead`` when it is one
  of those (WhatsApp writes 16000), else 48000, Opus' own rate.
* WebM/Opus as ``WEBM_OPUS`` (48 kHz), AMR as ``AMR`` (8 kHz), AMR-WB as ``AMR_WB``
  (16 kHz), WAV and FLAC with the rate and encoding read by Google from their header.
* Anything else (MP3 is a beta of v1p1beta1 only; MP4/AAC is not accepted) raises a
  permanent :class:`SpeechError`; the caller may convert it to OGG/Opus first.

The first of the bot's languages is ``language_code`` (as a BCP-47 locale, see
:data:`LOCALES`), up to three others are ``alternative_language_codes``; Google picks
among them and names its pick in each result.

Notes up to 60 s go through ``Recognize``. Google takes no more inline audio there, nor
in ``LongRunningRecognize`` (which wants longer audio in Cloud Storage), so a longer
OGG/Opus note is streamed (``StreamingRecognize``, in chunks of :data:`CHUNK_BYTES`,
up to Google's ~5-minute stream limit). Other formats are not measured here: past
60 s Google refuses them (a permanent error).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import grpc
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import speech_v1
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport

from runtime.errors import is_transient_status
from runtime.locales import LOCALES as BASE_LOCALES
from runtime.locales import to_language
from runtime.locales import to_locale as _to_locale
from runtime.settings import Settings
from voice.audio import ogg_opus_duration
from voice.stt.base import SpeechError, SpeechToText, Transcript

# Google names Mandarin differently; the rest is the shared table
C = TypeVar("C")
LOCALES = {**BASE_LOCALES, "zh": "cmn-Hans-CN"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # rates Google decodes OGG_OPUS at
SYNC_LIMIT_S = 60.0  # Recognize takes at most one minute of audio
CHUNK_BYTES = 16 * 1024  # audio per StreamingRecognizeRequest (Google's limit: 25 KB)
MAX_ALTERNATIVES = 3  # alternative_language_codes holds up to three
UNRATED = 1.0  # Google leaves confidence unset (0.0) on some results; see _confidence

Encoding = speech_v1.RecognitionConfig.AudioEncoding
Result = Union[speech_v1.SpeechRecognitionResult, speech_v1.StreamingRecognitionResult]

# content type (no parameters) → encoding and rate; rate 0: read from the file's header
FORMATS: dict[str, tuple[int, int]] = {
    "audio/ogg": (Encoding.OGG_OPUS, 0),
    "audio/opus": (Encoding.OGG_OPUS, 0),
    "application/ogg": (Encoding.OGG_OPUS, 0),
    "audio/webm": (Encoding.WEBM_OPUS, 48000),
    "audio/amr": (Encoding.AMR, 8000),
    "audio/amr-wb": (Encoding.AMR_WB, 16000),
    "audio/wav": (Encoding.ENCODING_UNSPECIFIED, 0),
    "audio/x-wav": (Encoding.ENCODING_UNSPECIFIED, 0),
    "audio/wave": (Encoding.ENCODING_UNSPECIFIED, 0),
    "audio/flac": (Encoding.ENCODING_UNSPECIFIED, 0),
    "audio/x-flac": (Encoding.ENCODING_UNSPECIFIED, 0),
}


def grpc_client(client: Callable[..., C], transport: type[Any], endpoint: str, name: str) -> C:
    """A Google async client: over an insecure channel to ``endpoint`` (an emulator or a
    local fake), or to Google with Application Default Credentials."""
    try:
        if endpoint:
            return client(transport=transport(channel=grpc.aio.insecure_channel(endpoint)))
        return client()
    except auth_exceptions.GoogleAuthError as e:
        raise speech_error(name, e) from e


def to_locale(language: str, overrides: Mapping[str, str] | None = None) -> str:
    """``es`` → ``es-ES`` for Google (``overrides`` first)."""
    return _to_locale(language, overrides, LOCALES)


def opus_input_rate(data: bytes) -> int | None:
    """The input sample rate recorded in an OGG/Opus stream's ``OpusHead``, or None
    when ``data`` is not OGG/Opus (RFC 7845: magic, version, channels, pre-skip, rate)."""
    head = data.find(b"OpusHead", 0, 512)
    if not data.startswith(b"OggS") or head < 0 or len(data) < head + 16:
        return None
    return int(struct.unpack_from("<I", data, head + 12)[0])


CLIENT_ERRORS = (
    google_exceptions.GoogleAPICallError,
    google_exceptions.RetryError,
    auth_exceptions.GoogleAuthError,
    asyncio.TimeoutError,
)


def speech_error(engine: str, error: Exception) -> SpeechError:
    """An error of the Google client as a SpeechError: 5xx, 429 and 408 are transient."""
    if isinstance(error, google_exceptions.GoogleAPICallError):
        status = error.code or 500
        transient = is_transient_status(status)
        return SpeechError(f"{engine}: {status} {error.message}", transient=transient)
    if isinstance(error, (google_exceptions.RetryError, asyncio.TimeoutError)):
        return SpeechError(f"{engine}: timed out ({error})", transient=True)
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return SpeechError(f"{engine}: credentials: {error}")
    return SpeechError(f"{engine}: {type(error).__name__}: {error}", transient=True)


class GoogleSTT(SpeechToText):
    name = "google"

    @classmethod
    def from_settings(cls, settings: Settings) -> GoogleSTT:
        return cls(endpoint=settings.voice.google_endpoint)

    def __init__(
        self,
        *,
        endpoint: str = "",
        language_codes: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.language_codes = dict(language_codes or {})
        self.timeout_s = timeout_s
        self.client: speech_v1.SpeechAsyncClient | None = None

    async def start(self) -> None:
        if self.client is not None:
            return
        self.client = grpc_client(
            speech_v1.SpeechAsyncClient, SpeechGrpcAsyncIOTransport, self.endpoint, self.name
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.transport.close()
            self.client = None

    def config(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> speech_v1.RecognitionConfig:
        """The recognition config for this voice note; SpeechError if Google cannot
        read it as it is."""
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime not in FORMATS:
            raise SpeechError(
                f"{self.name}: {mime or 'no content type'} is not accepted "
                f"(send one of {', '.join(sorted(FORMATS))})"
            )
        encoding, rate = FORMATS[mime]
        if encoding == Encoding.OGG_OPUS:
            head_rate = opus_input_rate(audio)
            if head_rate is None:
                raise SpeechError(f"{self.name}: {mime} but not OGG/Opus")
            rate = head_rate if head_rate in OPUS_RATES else 48000
        locales = list(dict.fromkeys(to_locale(c, self.language_codes) for c in languages))
        locales = locales or [to_locale("en", self.language_codes)]
        return speech_v1.RecognitionConfig(
            encoding=encoding,
            sample_rate_hertz=rate,
            language_code=locales[0],
            alternative_language_codes=locales[1 : 1 + MAX_ALTERNATIVES],
            enable_automatic_punctuation=True,
        )

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        if not audio:
            raise SpeechError(f"{self.name}: no audio (0 bytes)")
        config = self.config(audio, content_type, languages)
        duration = ogg_opus_duration(audio) if config.encoding == Encoding.OGG_OPUS else None
        if self.client is None:
            await self.start()
        assert self.client is not None
        results: list[Result] = []
        try:
            if duration is not None and duration > SYNC_LIMIT_S:
                results.extend(await self._stream(config, audio))
            else:
                response = await self.client.recognize(
                    config=config,
                    audio=speech_v1.RecognitionAudio(content=audio),
                    retry=None,
                    timeout=self.timeout_s,
                )
                results.extend(response.results)
        except CLIENT_ERRORS as e:
            raise speech_error(self.name, e) from e
        return self.transcript(results, duration, config.language_code)

    async def _stream(
        self, config: speech_v1.RecognitionConfig, audio: bytes
    ) -> list[speech_v1.StreamingRecognitionResult]:
        """The final results of a ``StreamingRecognize`` call sending all of ``audio``."""
        assert self.client is not None

        async def requests() -> AsyncIterator[speech_v1.StreamingRecognizeRequest]:
            streaming = speech_v1.StreamingRecognitionConfig(config=config)
            yield speech_v1.StreamingRecognizeRequest(streaming_config=streaming)
            for start in range(0, len(audio), CHUNK_BYTES):
                chunk = audio[start : start + CHUNK_BYTES]
                yield speech_v1.StreamingRecognizeRequest(audio_content=chunk)

        responses = await self.client.streaming_recognize(
            requests=requests(), retry=None, timeout=self.timeout_s
        )
        results: list[speech_v1.StreamingRecognitionResult] = []
        async for response in responses:
            results.extend(r for r in response.results if r.is_final)
        return results

    def transcript(
        self,
        results: Iterable[Result],
        duration: float | None,
        language_code: str,
    ) -> Transcript:
        """Best alternatives joined; the language Google picked (the first result's)."""
        texts: list[str] = []
        rated: list[float] = []
        picked = ""
        end = 0.0
        for result in results:
            end = max(end, result.result_end_time.total_seconds())
            if not result.alternatives:
                continue
            best = result.alternatives[0]
            if best.transcript.strip():
                texts.append(best.transcript.strip())
                picked = picked or result.language_code
                if best.confidence > 0:
                    rated.append(best.confidence)
        text = " ".join(texts)
        return Transcript(
            text=text,
            language=to_language(picked or language_code) if text else None,
            confidence=_confidence(rated) if text else 0.0,
            duration_s=duration if duration is not None else end,
            engine=self.name,
        )


def _confidence(rated: list[float]) -> float:
    """Mean of the rated results. Google leaves confidence unset on some results ("not
    guaranteed to be provided"); a transcript with none rated counts as trusted
    (:data:`UNRATED`), so a caller's threshold does not reject every such transcript."""
    return min(max(sum(rated) / len(rated), 0.0), 1.0) if rated else UNRATED
