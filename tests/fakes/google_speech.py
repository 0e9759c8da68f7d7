"""A local fake of Google Cloud Speech-to-Text v1 and Text-to-Speech v1 over gRPC.

One ``grpc.aio`` server on 127.0.0.1 serves the real methods
(``google.cloud.speech.v1.Speech/Recognize`` and ``/StreamingRecognize``,
``google.cloud.texttospeech.v1.TextToSpeech/SynthesizeSpeech``) with the packages' own
proto-plus messages as (de)serializers. Like Google it rejects requests without a
language, more than three alternative languages, empty audio, OGG_OPUS content that is
not OGG/Opus or a rate Opus cannot be decoded at, more than 60 s of audio on the
synchronous method, a stream that does not start with its config, stream chunks over
25,600 bytes and streams over 305 s. It records every request, answers a scripted transcript in the
language it is told (when that language was offered; otherwise the primary one) and
synthesizes a real, tiny OGG/Opus voice note made once with the bundled ffmpeg.
Failures can be scripted for the next calls.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import imageio_ffmpeg
from google.cloud import speech_v1
from google.cloud import texttospeech_v1 as tts

Encoding = speech_v1.RecognitionConfig.AudioEncoding
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@functools.lru_cache(maxsize=1)
def voice_note() -> bytes:
    """A real 0.6-s OGG/Opus voice note (a 220 Hz tone, 48 kHz mono), made once."""
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=220:duration=0.6",
        "-ac",
        "1",
        "-ar",
        "48000",
        "-c:a",
        "libopus",
        "-b:a",
        "16k",
        "-f",
        "ogg",
        "pipe:1",
    ]
    return subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout


def ogg_pages(data: bytes) -> list[tuple[int, bytes]]:
    """(granule position, payload) of each OGG page, walking the page headers."""
    pages, pos = [], 0
    while pos + 27 <= len(data) and data[pos : pos + 4] == b"OggS":
        granule = struct.unpack_from("<q", data, pos + 6)[0]
        count = data[pos + 26]
        lacing = data[pos + 27 : pos + 27 + count]
        start = pos + 27 + count
        pos = start + sum(lacing)
        pages.append((granule, data[start:pos]))
    return pages


def opus_stream(data: bytes) -> tuple[int, float] | None:
    """(OpusHead input rate, duration in seconds) of OGG/Opus bytes, or None."""
    pages = ogg_pages(data)
    if not pages or not pages[0][1].startswith(b"OpusHead") or len(pages[0][1]) < 19:
        return None
    head = pages[0][1]
    pre_skip, rate = struct.unpack_from("<HI", head, 10)
    return rate, max(pages[-1][0] - pre_skip, 0) / 48000


@dataclass
class Phrase:
    text: str
    language_code: str
    confidence: float


class FakeGoogleSpeech:
    SPEECH = "google.cloud.speech.v1.Speech"
    TTS = "google.cloud.texttospeech.v1.TextToSpeech"
    SYNC_LIMIT_S = 60.0
    STREAM_LIMIT_S = 305.0
    CHUNK_LIMIT = 25_600

    def __init__(self) -> None:
        self.recognitions: list[speech_v1.RecognizeRequest] = []  # streams: config + audio
        self.methods: list[str] = []
        self.chunks: list[int] = []  # audio bytes per streamed request
        self.syntheses: list[tts.SynthesizeSpeechRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.failures: list[grpc.StatusCode] = []
        self.answers: list[list[Phrase]] = []
        self.audio = b""
        self.server: Any = None
        self.target = ""

    def answer(self, *texts: str, language_code: str = "es-es", confidence: float = 0.92) -> None:
        """What the next recognition hears: one result per text, in ``language_code``."""
        self.answers.append([Phrase(t, language_code, confidence) for t in texts])

    def fail_next(self, code: grpc.StatusCode, count: int = 1) -> None:
        self.failures.extend([code] * count)

    @property
    def last_recognition(self) -> speech_v1.RecognizeRequest:
        return self.recognitions[-1]

    @property
    def last_synthesis(self) -> tts.SynthesizeSpeechRequest:
        return self.syntheses[-1]

    async def start(self) -> str:
        self.audio = await asyncio.to_thread(voice_note)
        speech = grpc.method_handlers_generic_handler(
            self.SPEECH,
            {
                "Recognize": grpc.unary_unary_rpc_method_handler(
                    self.recognize,
                    request_deserializer=speech_v1.RecognizeRequest.deserialize,
                    response_serializer=speech_v1.RecognizeResponse.serialize,
                ),
                "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                    self.streaming_recognize,
                    request_deserializer=speech_v1.StreamingRecognizeRequest.deserialize,
                    response_serializer=speech_v1.StreamingRecognizeResponse.serialize,
                ),
            },
        )
        synthesis = grpc.method_handlers_generic_handler(
            self.TTS,
            {
                "SynthesizeSpeech": grpc.unary_unary_rpc_method_handler(
                    self.synthesize_speech,
                    request_deserializer=tts.SynthesizeSpeechRequest.deserialize,
                    response_serializer=tts.SynthesizeSpeechResponse.serialize,
                )
            },
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((speech, synthesis))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.target = f"127.0.0.1:{port}"
        return self.target

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)

    # ------------------------------------------------------------------ speech-to-text

    async def recognize(
        self, request: speech_v1.RecognizeRequest, context: Any
    ) -> speech_v1.RecognizeResponse:
        self._record("Recognize", request, context)
        phrases, duration = await self._hear(request.config, request.audio.content, context)
        if duration > self.SYNC_LIMIT_S:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Sync input too long. For audio longer than 1 min use LongRunningRecognize "
                "with a 'uri' parameter.",
            )
        results = [speech_v1.SpeechRecognitionResult(**p) for p in phrases]
        billed = timedelta(seconds=max(1, -(-duration // 1)))
        return speech_v1.RecognizeResponse(results=results, total_billed_time=billed)

    async def streaming_recognize(
        self, requests: AsyncIterator[speech_v1.StreamingRecognizeRequest], context: Any
    ) -> AsyncIterator[speech_v1.StreamingRecognizeResponse]:
        config: speech_v1.RecognitionConfig | None = None
        audio = bytearray()
        async for request in requests:
            if config is None:
                if "streaming_config" not in request:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "Malformed request: the first request must hold streaming_config.",
                    )
                config = request.streaming_config.config
                continue
            if len(request.audio_content) > self.CHUNK_LIMIT:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Request audio can be a maximum of {self.CHUNK_LIMIT} bytes.",
                )
            self.chunks.append(len(request.audio_content))
            audio += request.audio_content
        config = config or speech_v1.RecognitionConfig()
        content = speech_v1.RecognitionAudio(content=bytes(audio))
        self._record(
            "StreamingRecognize", speech_v1.RecognizeRequest(config=config, audio=content), context
        )
        phrases, duration = await self._hear(config, bytes(audio), context)
        if duration > self.STREAM_LIMIT_S:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                "Exceeded maximum allowed stream duration of 305 seconds.",
            )
        for p in phrases:
            result = speech_v1.StreamingRecognitionResult(is_final=True, **p)
            yield speech_v1.StreamingRecognizeResponse(results=[result])

    def _record(self, method: str, request: speech_v1.RecognizeRequest, context: Any) -> None:
        self.methods.append(method)
        self.recognitions.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})

    async def _hear(
        self, config: speech_v1.RecognitionConfig, content: bytes, context: Any
    ) -> tuple[list[dict[str, Any]], float]:
        """Check a recognition like Google; the fields of each result, and the duration."""
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        if not config.language_code:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing language_code.")
        if len(config.alternative_language_codes) > 3:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "At most 3 alternative_language_codes."
            )
        if not content:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RecognitionAudio not set.")
        duration = 5.0
        if config.encoding == Encoding.OGG_OPUS:
            stream = opus_stream(content)
            if stream is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "bad encoding: expected OGG/Opus audio"
                )
            assert stream is not None
            duration = stream[1]
            if config.sample_rate_hertz not in OPUS_RATES:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"sample_rate_hertz {config.sample_rate_hertz} is not valid for OGG_OPUS",
                )
        offered = [config.language_code, *config.alternative_language_codes]
        phrases = self.answers.pop(0) if self.answers else [Phrase("hola", "es-es", 0.9)]
        results = []
        for i, phrase in enumerate(phrases):
            picked = next(
                (c.lower() for c in offered if c.lower() == phrase.language_code.lower()),
                config.language_code.lower(),
            )
            alternative = speech_v1.SpeechRecognitionAlternative(
                transcript=(" " if i else "") + phrase.text, confidence=phrase.confidence
            )
            results.append(
                {
                    "alternatives": [alternative],
                    "result_end_time": timedelta(seconds=duration * (i + 1) / len(phrases)),
                    "language_code": picked,
                }
            )
        return results, duration

    # ------------------------------------------------------------------ text-to-speech

    async def synthesize_speech(
        self, request: tts.SynthesizeSpeechRequest, context: Any
    ) -> tts.SynthesizeSpeechResponse:
        self.syntheses.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        if not (request.input.text or request.input.ssml):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Input text is empty.")
        voice = request.voice
        if not voice.language_code:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing language_code.")
        if voice.name and not voice.name.startswith(voice.language_code + "-"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Requested language code '{voice.language_code}' doesn't match the voice "
                f"'{voice.name}'.",
            )
        if request.audio_config.audio_encoding != tts.AudioEncoding.OGG_OPUS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The fake speaks OGG_OPUS only.")
        return tts.SynthesizeSpeechResponse(audio_content=self.audio)
