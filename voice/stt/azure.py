"""Azure AI Speech speech-to-text through the official Speech SDK.

``region`` names the Azure resource's region; ``host`` replaces it with a URL (a
Speech container or a local fake: ``ws://127.0.0.1:5000``).

Audio: the SDK reads compressed input (OGG/Opus, MP3...) only through GStreamer on
Linux, and the GStreamer plugins it needs are not on our machines. Every voice note is
therefore decoded here to 16 kHz, 16-bit mono PCM with the ffmpeg of ``imageio-ffmpeg``
(a subprocess, in a worker thread) and pushed through a ``PushAudioInputStream``.

Language: with several bot languages, at-start language identification among the
first four of them (the SDK's limit for at-start LID), as BCP-47 locales
(:data:`LOCALES`); with one, that language is simply recognized.

Recognition is continuous, not ``recognize_once``: a single-shot recognition stops at
the first pause (or after 15 s), and a voice note often holds several sentences. The
SDK blocks, so the whole recognition runs in a worker thread.

Speed: the SDK sends the first 5 s of audio at once and the rest at twice real time
(``upload_speed``, the SDK's own default; a faster upload is an undocumented SDK
property, so raise it only after trying it against the real service). A 120-s note
thus takes about a minute to upload, and the time allowed for one transcription is
``timeout_s`` plus that upload time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import imageio_ffmpeg

from runtime.locales import to_locale
from runtime.settings import Settings, SettingsError
from voice.stt.base import SpeechError, SpeechToText, Transcript

MAX_LID_LANGUAGES = 4  # at-start language identification takes up to four candidates
SAMPLE_RATE = 16000
BYTES_PER_SECOND = 2 * SAMPLE_RATE
FAST_LANE_S = 5.0  # the SDK sends this much audio unthrottled
UNRATED = 1.0  # a phrase without an NBest confidence counts as trusted
LID_CONFIDENCE = {"high": 0.9, "medium": 0.6, "low": 0.3}  # PrimaryLanguage.Confidence

_E = speechsdk.CancellationErrorCode
TRANSIENT = frozenset(
    {
        _E.TooManyRequests,
        _E.ConnectionFailure,
        _E.ServiceTimeout,
        _E.ServiceError,
        _E.ServiceUnavailable,
        _E.ServiceRedirectTemporary,
        _E.RuntimeError,
    }
)
_SEEKABLE = {"audio/mp4", "audio/m4a", "audio/x-m4a"}  # the index may sit at the end


def speech_config(key: str, region: str, host: str) -> speechsdk.SpeechConfig:
    """The SDK's config for a key and a region or host; every missing setting named."""
    problems = []
    if not key:
        problems.append("AZURE_SPEECH_KEY is required for the azure speech engines")
    if not (region or host):
        problems.append(
            "HABLA_AZURE_SPEECH_REGION (or HABLA_AZURE_SPEECH_HOST) is required for the "
            "azure speech engines"
        )
    if problems:
        raise SettingsError(problems)
    if host:
        return speechsdk.SpeechConfig(host=host, subscription=key)
    return speechsdk.SpeechConfig(subscription=key, region=region)


def cancellation_error(engine: str, code: Any, details: str) -> SpeechError:
    """A canceled recognition or synthesis as a SpeechError: outages, throttling and
    timeouts are transient; bad credentials and bad requests are not."""
    name = getattr(code, "name", str(code))
    return SpeechError(f"{engine}: {name}: {details.strip()}", transient=code in TRANSIENT)


def decode_pcm16k(audio: bytes, content_type: str, timeout_s: float) -> bytes:
    """A voice note as 16 kHz, 16-bit little-endian mono PCM (ffmpeg; blocking)."""
    out = ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    try:
        if content_type.split(";", 1)[0].strip().lower() in _SEEKABLE:
            with tempfile.NamedTemporaryFile(suffix=".m4a") as tmp:
                tmp.write(audio)
                tmp.flush()
                proc = subprocess.run(
                    [*cmd, "-i", tmp.name, *out], capture_output=True, timeout=timeout_s
                )
        else:
            proc = subprocess.run(
                [*cmd, "-i", "pipe:0", *out], input=audio, capture_output=True, timeout=timeout_s
            )
    except subprocess.TimeoutExpired:
        raise SpeechError(f"azure: decoding took longer than {timeout_s:g} s") from None
    if proc.returncode != 0 or not proc.stdout:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1][:200] if lines else "no audio decoded"
        raise SpeechError(f"azure: unreadable {content_type or 'audio'}: {reason}")
    return proc.stdout


@dataclass(frozen=True)
class _Phrase:
    text: str
    locale: str
    confidence: float | None
    language_confidence: float


class AzureSTT(SpeechToText):
    name = "azure"

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureSTT:
        v = settings.voice
        return cls(key=v.azure_key, region=v.azure_region, host=v.azure_host)

    def __init__(
        self,
        *,
        key: str = "",
        region: str = "",
        host: str = "",
        language_codes: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        upload_speed: float = 2.0,
    ) -> None:
        if upload_speed <= 0:
            raise ValueError("upload_speed must be positive")
        self.config = speech_config(key, region, host)
        self.config.output_format = speechsdk.OutputFormat.Detailed  # NBest confidences
        self.config.set_profanity(speechsdk.ProfanityOption.Raw)  # the words, unmasked
        self.config.set_property_by_name(
            "SPEECH-AudioThrottleAsPercentageOfRealTime", str(round(upload_speed * 100))
        )
        self.language_codes = dict(language_codes or {})
        self.timeout_s = timeout_s
        self.upload_speed = upload_speed

    def time_allowed(self, seconds: float) -> float:
        """``timeout_s`` plus the time the SDK takes to send ``seconds`` of audio."""
        return self.timeout_s + max(seconds - FAST_LANE_S, 0.0) / self.upload_speed

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        if not audio:
            raise SpeechError(f"{self.name}: no audio (0 bytes)")
        locales = list(dict.fromkeys(to_locale(c, self.language_codes) for c in languages))
        locales = locales[:MAX_LID_LANGUAGES] or [to_locale("en", self.language_codes)]
        pcm = await asyncio.to_thread(decode_pcm16k, audio, content_type, self.timeout_s)
        allowed = self.time_allowed(len(pcm) / BYTES_PER_SECOND)
        try:
            phrases = await asyncio.wait_for(
                asyncio.to_thread(self._recognize, pcm, locales, allowed), allowed + 5
            )
        except asyncio.TimeoutError:
            raise SpeechError(
                f"{self.name}: no answer in {allowed:.0f} s", transient=True
            ) from None
        text = " ".join(p.text for p in phrases)
        rated = [p.confidence for p in phrases if p.confidence is not None]
        first = phrases[0] if phrases else None
        return Transcript(
            text=text,
            language=first.locale.split("-", 1)[0].lower() if first and first.locale else None,
            confidence=(sum(rated) / len(rated) if rated else UNRATED) if text else 0.0,
            duration_s=len(pcm) / BYTES_PER_SECOND,
            engine=self.name,
            language_confidence=first.language_confidence if first else 0.0,
        )

    def _recognize(self, pcm: bytes, locales: list[str], allowed: float) -> list[_Phrase]:
        """Continuous recognition of the whole stream (blocking; a worker thread)."""
        stream_format = speechsdk.audio.AudioStreamFormat(
            samples_per_second=SAMPLE_RATE, bits_per_sample=16, channels=1
        )
        stream = speechsdk.audio.PushAudioInputStream(stream_format=stream_format)
        stream.write(pcm)
        stream.close()
        audio_config = speechsdk.audio.AudioConfig(stream=stream)
        if len(locales) > 1:
            lid = speechsdk.languageconfig.AutoDetectSourceLanguageConfig(languages=locales)
            recognizer = speechsdk.SpeechRecognizer(
                speech_config=self.config,
                audio_config=audio_config,
                auto_detect_source_language_config=lid,
            )
        else:
            recognizer = speechsdk.SpeechRecognizer(
                speech_config=self.config, audio_config=audio_config, language=locales[0]
            )
        phrases: list[_Phrase] = []
        errors: list[Any] = []
        stopped = threading.Event()  # after the end of the stream, or an error

        def recognized(evt: Any) -> None:
            if evt.result.reason == speechsdk.ResultReason.RecognizedSpeech and evt.result.text:
                phrases.append(self._phrase(evt.result, locales))

        def canceled(evt: Any) -> None:
            if evt.cancellation_details.reason == speechsdk.CancellationReason.Error:
                errors.append(evt.cancellation_details)

        recognizer.recognized.connect(recognized)
        recognizer.canceled.connect(canceled)
        recognizer.session_stopped.connect(lambda evt: stopped.set())
        try:
            recognizer.start_continuous_recognition_async().get()
            if not stopped.wait(allowed):
                recognizer.stop_continuous_recognition_async().get()
        finally:
            recognizer.recognized.disconnect_all()
            recognizer.canceled.disconnect_all()
            recognizer.session_stopped.disconnect_all()
        if errors:
            raise cancellation_error(self.name, errors[0].code, errors[0].error_details)
        if not stopped.is_set():
            raise SpeechError(f"{self.name}: no answer in {allowed:.0f} s", transient=True)
        return phrases

    def _phrase(self, result: Any, locales: list[str]) -> _Phrase:
        try:
            detail: dict[str, Any] = json.loads(result.json or "{}")
        except ValueError:
            detail = {}
        best = (detail.get("NBest") or [{}])[0]
        confidence = best.get("Confidence")
        if len(locales) == 1:
            locale, language_confidence = locales[0], 1.0
        else:
            locale = speechsdk.AutoDetectSourceLanguageResult(result).language or ""
            primary = detail.get("PrimaryLanguage") or {}
            language_confidence = LID_CONFIDENCE.get(str(primary.get("Confidence")).lower(), 0.0)
        return _Phrase(
            text=result.text.strip(),
            locale=locale,
            confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
            language_confidence=language_confidence,
        )
