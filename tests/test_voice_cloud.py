"""Cloud speech engines: the official Google and Azure SDK clients against local fakes
that speak each real wire protocol (gRPC for Google, the Speech SDK's websocket
protocol for Azure), with a real OGG/Opus voice note made from a Spanish recording."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import wave
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import imageio_ffmpeg
import pytest
from google.cloud import speech_v1
from google.cloud import texttospeech_v1 as tts

from runtime.settings import SettingsError
from tests.conftest import free_port
from tests.fakes.azure_speech import FakeAzureSpeech, Phrase
from tests.fakes.google_speech import FakeGoogleSpeech, opus_stream
from voice.stt.azure import AzureSTT
from voice.stt.base import SpeechError
from voice.stt.google import GoogleSTT
from voice.tts.azure import AzureTTS
from voice.tts.google import GoogleTTS

SPEECH_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
SPANISH_WAV = SPEECH_DATA / "picovoice-leopard" / "resources" / "audio_samples" / "test_es.wav"
Encoding = speech_v1.RecognitionConfig.AudioEncoding


def to_ogg_opus(wav: Path, *extra: str) -> bytes:
    """``wav`` as an OGG/Opus voice note like WhatsApp's (16 kHz input, mono)."""
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-nostdin", "-hide_banner", "-loglevel", "error"),
        *extra,
        *("-i", str(wav), "-ac", "1", "-ar", "16000", "-c:a", "libopus", "-b:a", "16k"),
        *("-f", "ogg", "pipe:1"),
    ]
    return subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout


@pytest.fixture(scope="session")
def spanish_note() -> bytes:
    if not SPANISH_WAV.is_file():
        pytest.skip(f"shared speech data missing: {SPANISH_WAV}")
    return to_ogg_opus(SPANISH_WAV)


@pytest.fixture(scope="session")
def long_note() -> bytes:
    """The Spanish recording looped to ~78 s: past Google's 60-s synchronous limit."""
    if not SPANISH_WAV.is_file():
        pytest.skip(f"shared speech data missing: {SPANISH_WAV}")
    return to_ogg_opus(SPANISH_WAV, "-stream_loop", "8")


# ---------------------------------------------------------------------------- Google


@pytest.fixture
async def google() -> AsyncIterator[FakeGoogleSpeech]:
    fake = FakeGoogleSpeech()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def google_stt(google: FakeGoogleSpeech) -> AsyncIterator[GoogleSTT]:
    stt = GoogleSTT(endpoint=google.target, timeout_s=5)
    yield stt
    await stt.close()


@pytest.fixture
async def google_tts(google: FakeGoogleSpeech) -> AsyncIterator[GoogleTTS]:
    engine = GoogleTTS(
        endpoint=google.target, voices={"es": "es-ES-Neural2-A", "pt": "pt-PT-Wavenet-B"}
    )
    yield engine
    await engine.close()


async def test_google_stt_sends_ogg_opus_in_the_bots_languages(
    google: FakeGoogleSpeech, google_stt: GoogleSTT, spanish_note: bytes
) -> None:
    google.answer("Hola, quiero hacer un pedido.", "¿Cuánto cuesta?", confidence=0.9)
    transcript = await google_stt.transcribe(
        spanish_note, "audio/ogg; codecs=opus", ["es", "en", "pt"]
    )
    assert transcript.text == "Hola, quiero hacer un pedido. ¿Cuánto cuesta?"
    assert transcript.language == "es"
    assert transcript.confidence == pytest.approx(0.9)
    assert transcript.duration_s == pytest.approx(8.66, abs=0.05)
    assert transcript.engine == "google"
    assert google.methods == ["Recognize"]
    req = google.last_recognition
    assert req.config.encoding == Encoding.OGG_OPUS
    assert req.config.sample_rate_hertz == 16000  # the OpusHead input rate
    assert req.config.language_code == "es-ES"
    assert list(req.config.alternative_language_codes) == ["en-US", "pt-BR"]
    assert req.config.enable_automatic_punctuation
    assert req.audio.content == spanish_note


async def test_google_stt_language_is_the_one_google_picked(
    google: FakeGoogleSpeech, spanish_note: bytes
) -> None:
    google.answer("Olá, tudo bem?", language_code="pt-pt")
    stt = GoogleSTT(endpoint=google.target, language_codes={"pt": "pt-PT"})
    try:
        transcript = await stt.transcribe(spanish_note, "audio/ogg", ["en", "es", "pt", "fr", "de"])
    finally:
        await stt.close()
    assert (transcript.text, transcript.language) == ("Olá, tudo bem?", "pt")
    config = google.last_recognition.config
    assert config.language_code == "en-US"
    assert list(config.alternative_language_codes) == ["es-ES", "pt-PT", "fr-FR"]  # at most 3


async def test_google_stt_streams_a_note_over_a_minute(
    google: FakeGoogleSpeech, google_stt: GoogleSTT, long_note: bytes
) -> None:
    google.answer("Un mensaje largo.", "Con dos frases.", confidence=0.8)
    transcript = await google_stt.transcribe(long_note, "audio/ogg", ["es", "en"])
    assert transcript.text == "Un mensaje largo. Con dos frases."
    assert transcript.language == "es"
    assert transcript.confidence == pytest.approx(0.8)
    stream = opus_stream(long_note)
    assert stream is not None and stream[1] > 60
    assert transcript.duration_s == pytest.approx(stream[1], abs=0.05)
    assert google.methods == ["StreamingRecognize"]
    req = google.last_recognition
    assert req.audio.content == long_note
    assert (req.config.encoding, req.config.sample_rate_hertz) == (Encoding.OGG_OPUS, 16000)
    assert list(req.config.alternative_language_codes) == ["en-US"]
    assert len(google.chunks) > 1 and max(google.chunks) <= 25_600
    google.fail_next(grpc.StatusCode.UNAVAILABLE)  # a failed stream maps like a call
    with pytest.raises(SpeechError) as info:
        await google_stt.transcribe(long_note, "audio/ogg", ["es"])
    assert info.value.transient


def test_google_stt_opus_rate_is_one_google_decodes_at(spanish_note: bytes) -> None:
    head = spanish_note.index(b"OpusHead")
    odd = spanish_note[: head + 12] + struct.pack("<I", 44100) + spanish_note[head + 16 :]
    stt = GoogleSTT(endpoint="127.0.0.1:1")
    assert stt.config(spanish_note, "audio/ogg", ["es"]).sample_rate_hertz == 16000
    assert stt.config(odd, "audio/ogg", ["es"]).sample_rate_hertz == 48000  # Opus' own


async def test_google_stt_silence_is_an_empty_transcript(
    google: FakeGoogleSpeech, google_stt: GoogleSTT, spanish_note: bytes
) -> None:
    google.answer()
    transcript = await google_stt.transcribe(spanish_note, "audio/ogg", ["es"])
    assert (transcript.text, transcript.language, transcript.confidence) == ("", None, 0.0)


@pytest.mark.parametrize(
    ("content_type", "encoding", "rate"),
    [("audio/amr", Encoding.AMR, 8000), ("audio/wav", Encoding.ENCODING_UNSPECIFIED, 0)],
)
async def test_google_stt_other_encodings(
    google: FakeGoogleSpeech,
    google_stt: GoogleSTT,
    content_type: str,
    encoding: Encoding,
    rate: int,
) -> None:
    await google_stt.transcribe(b"#!AMR\n" + bytes(64), content_type, ["es"])
    config = google.last_recognition.config
    assert (config.encoding, config.sample_rate_hertz) == (encoding, rate)


@pytest.mark.parametrize(
    ("audio", "content_type"),
    [
        (b"ID3\x03" + bytes(64), "audio/mpeg"),
        (b"OggS" + bytes(64), "audio/ogg"),
        (b"", "audio/ogg"),
    ],
)
async def test_google_stt_rejects_what_it_cannot_send(
    google: FakeGoogleSpeech, google_stt: GoogleSTT, audio: bytes, content_type: str
) -> None:
    with pytest.raises(SpeechError) as info:
        await google_stt.transcribe(audio, content_type, ["es"])
    assert not info.value.transient
    assert google.recognitions == []


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
    ],
)
async def test_google_stt_status_mapping(
    google: FakeGoogleSpeech,
    google_stt: GoogleSTT,
    spanish_note: bytes,
    code: grpc.StatusCode,
    transient: bool,
) -> None:
    google.fail_next(code)
    with pytest.raises(SpeechError) as info:
        await google_stt.transcribe(spanish_note, "audio/ogg", ["es"])
    assert info.value.transient is transient
    google.answer("Otra vez.")
    assert (await google_stt.transcribe(spanish_note, "audio/ogg", ["es"])).text == "Otra vez."


async def test_google_refused_connection_is_transient_and_not_retried(
    spanish_note: bytes,
) -> None:
    stt = GoogleSTT(endpoint=f"127.0.0.1:{free_port()}", timeout_s=5)
    try:
        # the guard only stops a hang; the client's own retries would end in a timeout
        with pytest.raises(SpeechError) as info:
            await asyncio.wait_for(stt.transcribe(spanish_note, "audio/ogg", ["es"]), 120)
    finally:
        await stt.close()
    assert info.value.transient
    assert "503" in str(info.value) and "timed out" not in str(info.value)


async def test_google_tts_asks_for_ogg_opus_in_the_languages_voice(
    google: FakeGoogleSpeech, google_tts: GoogleTTS
) -> None:
    speech = await google_tts.synthesize("Tu pedido está listo.", "es")
    req = google.last_synthesis
    assert req.input.text == "Tu pedido está listo."
    assert req.audio_config.audio_encoding == tts.AudioEncoding.OGG_OPUS
    assert (req.voice.language_code, req.voice.name) == ("es-ES", "es-ES-Neural2-A")
    assert speech.audio.startswith(b"OggS") and speech.audio == google.audio
    assert speech.content_type == "audio/ogg"
    assert speech.duration_s == pytest.approx(0.6, abs=0.03)
    assert (speech.engine, speech.voice) == ("google", "es-ES-Neural2-A")

    await google_tts.synthesize("Olá", "pt")  # the voice's own locale wins
    assert (google.last_synthesis.voice.language_code, google.last_synthesis.voice.name) == (
        "pt-PT",
        "pt-PT-Wavenet-B",
    )
    speech = await google_tts.synthesize("Hello", "en")  # no voice: Google's default
    assert (google.last_synthesis.voice.language_code, google.last_synthesis.voice.name) == (
        "en-US",
        "",
    )
    assert speech.voice == "en-US"
    await google_tts.synthesize("Hello", "en", "en-GB-Neural2-B")
    assert google.last_synthesis.voice.language_code == "en-GB"


async def test_google_tts_errors(google: FakeGoogleSpeech, google_tts: GoogleTTS) -> None:
    google.fail_next(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(SpeechError) as info:
        await google_tts.synthesize("Hola", "es")
    assert info.value.transient
    google.fail_next(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(SpeechError) as info:
        await google_tts.synthesize("Hola", "es")
    assert not info.value.transient
    with pytest.raises(SpeechError) as info:
        await google_tts.synthesize("  ", "es")
    assert not info.value.transient
    assert len(google.syntheses) == 2


# ---------------------------------------------------------------------------- Azure

AZURE_KEY = "test-azure-speech-key-0123456789"
FAST = 50.0  # upload speed (× real time) after the SDK's first 5 s: keeps the tests quick


@pytest.fixture
async def azure() -> AsyncIterator[FakeAzureSpeech]:
    fake = FakeAzureSpeech(AZURE_KEY)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def azure_stt(azure: FakeAzureSpeech) -> AzureSTT:
    return AzureSTT(key=AZURE_KEY, host=azure.host, timeout_s=10, upload_speed=FAST)


@pytest.fixture
def azure_tts(azure: FakeAzureSpeech) -> AzureTTS:
    return AzureTTS(key=AZURE_KEY, host=azure.host, voices={"pt": "pt-PT-RaquelNeural"})


def silent_wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(int(32000 * seconds)))
    return out.getvalue()


async def test_azure_stt_identifies_the_language_among_the_bots(
    azure: FakeAzureSpeech, azure_stt: AzureSTT, spanish_note: bytes
) -> None:
    azure.answer(Phrase("Hola, quiero hacer un pedido.", "es-ES", 0.8), Phrase("Gracias.", "es-ES"))
    transcript = await azure_stt.transcribe(
        spanish_note, "audio/ogg; codecs=opus", ["es", "en", "pt"]
    )
    assert transcript.text == "Hola, quiero hacer un pedido. Gracias."
    assert transcript.language == "es"
    assert transcript.language_confidence == pytest.approx(0.9)  # "High"
    assert transcript.confidence == pytest.approx(0.85)
    assert transcript.duration_s == pytest.approx(8.66, abs=0.05)
    assert transcript.engine == "azure"
    (turn,) = azure.recognitions
    assert turn.headers["Ocp-Apim-Subscription-Key"] == AZURE_KEY
    assert turn.path == "/speech/recognition/conversation/cognitiveservices/v1"  # continuous
    assert turn.candidates == ["es-ES", "en-US", "pt-BR"]
    assert turn.speech_context["languageId"]["mode"] == "DetectAtAudioStart"
    assert turn.speech_context["phraseOutput"]["format"] == "Detailed"
    assert turn.wav_format == (1, 1, 16000, 16)  # PCM, mono, 16 kHz, 16-bit
    assert turn.audio_bytes == pytest.approx(8.66 * 32000, rel=0.01)
    assert turn.peak > 1000 and turn.ended


async def test_azure_stt_one_language_is_recognized_without_identification(
    azure: FakeAzureSpeech, spanish_note: bytes
) -> None:
    stt = AzureSTT(
        key=AZURE_KEY, host=azure.host, language_codes={"es": "es-MX"}, upload_speed=FAST
    )
    azure.answer(Phrase("¿Cuánto cuesta el envío?", "es-MX", 0.7))
    transcript = await stt.transcribe(spanish_note, "audio/ogg", ["es"])
    assert (transcript.text, transcript.language) == ("¿Cuánto cuesta el envío?", "es")
    assert transcript.confidence == pytest.approx(0.7)
    (turn,) = azure.recognitions
    assert turn.query["language"] == "es-MX"
    assert "languageId" not in turn.speech_context


async def test_azure_stt_offers_at_most_four_languages(
    azure: FakeAzureSpeech, azure_stt: AzureSTT, spanish_note: bytes
) -> None:
    azure.answer(Phrase("Bonjour", "fr-FR"))
    transcript = await azure_stt.transcribe(
        spanish_note, "audio/ogg", ["en", "es", "pt", "it", "fr"]
    )
    assert azure.recognitions[0].candidates == ["en-US", "es-ES", "pt-BR", "it-IT"]
    assert transcript.language == "en"  # French was not offered: the fake picks the first


async def test_azure_stt_silence_is_an_empty_transcript(
    azure: FakeAzureSpeech, azure_stt: AzureSTT
) -> None:
    transcript = await azure_stt.transcribe(silent_wav(1.0), "audio/wav", ["es", "en"])
    assert (transcript.text, transcript.language, transcript.confidence) == ("", None, 0.0)
    assert transcript.duration_s == pytest.approx(1.0)
    assert azure.recognitions[0].audio_bytes == 32000


async def test_azure_stt_unreadable_audio_is_permanent(
    azure: FakeAzureSpeech, azure_stt: AzureSTT
) -> None:
    with pytest.raises(SpeechError) as info:
        await azure_stt.transcribe(b"OggS not really", "audio/ogg", ["es"])
    assert not info.value.transient
    assert azure.recognitions == [] and azure.rejected == []


@pytest.mark.parametrize(("status", "transient"), [(401, False), (503, True)])
async def test_azure_stt_errors(
    azure: FakeAzureSpeech, spanish_note: bytes, status: int, transient: bool
) -> None:
    key = "wrong-key" if status == 401 else AZURE_KEY
    stt = AzureSTT(key=key, host=azure.host, timeout_s=10, upload_speed=FAST)
    if status != 401:
        azure.fail_next(status, count=5)  # the SDK tries a refused upgrade again
    with pytest.raises(SpeechError) as info:
        await stt.transcribe(spanish_note, "audio/ogg", ["es", "en"])
    assert info.value.transient is transient
    assert azure.rejected[0] == ("/speech/recognition/conversation/cognitiveservices/v1", status)
    assert azure.recognitions == []


async def test_azure_refused_connection_is_transient(spanish_note: bytes) -> None:
    stt = AzureSTT(key=AZURE_KEY, host=f"ws://127.0.0.1:{free_port()}", timeout_s=10)
    with pytest.raises(SpeechError) as info:
        await stt.transcribe(spanish_note, "audio/ogg", ["es"])
    assert info.value.transient
    tts_engine = AzureTTS(key=AZURE_KEY, host=f"ws://127.0.0.1:{free_port()}")
    with pytest.raises(SpeechError) as info:
        await tts_engine.synthesize("Hola", "es")
    assert info.value.transient


def test_azure_settings_are_checked_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        AzureSTT()
    assert len(info.value.problems) == 2
    with pytest.raises(SettingsError):
        AzureTTS(key=AZURE_KEY)


async def test_azure_tts_speaks_ssml_in_the_languages_voice(
    azure: FakeAzureSpeech, azure_tts: AzureTTS
) -> None:
    speech = await azure_tts.synthesize("Tu pedido & <tu factura> están listos.", "es")
    (synthesis,) = azure.syntheses
    assert synthesis.headers["Ocp-Apim-Subscription-Key"] == AZURE_KEY
    assert synthesis.output_format == "ogg-16khz-16bit-mono-opus"
    root = ET.fromstring(synthesis.ssml)
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "es-ES"
    (voice,) = root
    assert voice.get("name") == "es-ES-ElviraNeural"
    assert voice.text == "Tu pedido & <tu factura> están listos."
    assert speech.audio == azure.audio and speech.audio.startswith(b"OggS")
    assert (speech.content_type, speech.engine, speech.voice) == (
        "audio/ogg",
        "azure",
        "es-ES-ElviraNeural",
    )
    assert speech.duration_s == pytest.approx(0.6, abs=0.03)

    await azure_tts.synthesize("Olá", "pt")  # the configured voice and its locale
    root = ET.fromstring(azure.syntheses[-1].ssml)
    assert (root.get("{http://www.w3.org/XML/1998/namespace}lang"), root[0].get("name")) == (
        "pt-PT",
        "pt-PT-RaquelNeural",
    )
    await azure_tts.synthesize("Hola", "es", "es-MX-DaliaNeural")
    assert 'xml:lang="es-MX"' in azure.syntheses[-1].ssml


async def test_azure_tts_output_rate(azure: FakeAzureSpeech) -> None:
    engine = AzureTTS(key=AZURE_KEY, host=azure.host, sample_rate_hz=48000)
    await engine.synthesize("Hello", "en")
    assert azure.syntheses[0].output_format == "ogg-48khz-16bit-mono-opus"
    with pytest.raises(ValueError):
        AzureTTS(key=AZURE_KEY, host=azure.host, sample_rate_hz=22050)


async def test_azure_tts_errors(azure: FakeAzureSpeech, azure_tts: AzureTTS) -> None:
    azure.fail_next(503, count=2)  # the SDK tries a refused upgrade once more
    with pytest.raises(SpeechError) as info:
        await azure_tts.synthesize("Hola", "es")
    assert info.value.transient
    wrong = AzureTTS(key="wrong-key", host=azure.host)
    with pytest.raises(SpeechError) as info:
        await wrong.synthesize("Hola", "es")
    assert not info.value.transient
    assert [status for _, status in azure.rejected] == [503, 503, 401]
    with pytest.raises(SpeechError) as info:
        await azure_tts.synthesize("Bonjour", "xx")  # no voice for the language
    assert not info.value.transient
    assert azure.syntheses == []


async def test_azure_tts_ssml_refused_by_the_service_is_permanent(azure: FakeAzureSpeech) -> None:
    class NoVoice(AzureTTS):
        def ssml(self, text: str, language: str, voice: str) -> str:
            return super().ssml(text, language, voice).replace("<voice name=", "<p title=")

    engine = NoVoice(key=AZURE_KEY, host=azure.host)
    with pytest.raises(SpeechError, match="BadRequest") as info:
        await engine.synthesize("Hola", "es")
    assert not info.value.transient
