"""Amazon speech engines: Polly through boto3 against moto's server (and a small fake
for failures moto cannot make), Transcribe through the official streaming SDK against
a local HTTP/2 + TLS fake of its event-stream protocol; real recordings as audio.
Then a voice note over Twilio, heard by Transcribe and answered by Polly."""

from __future__ import annotations

import math
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.settings import SettingsError, load_settings
from runtime.speech import Utterance
from tests.conftest import SHARED_DATA, ServerFactory, base_env, free_port
from tests.fakes.aws_polly import FakePolly, MotoPolly
from tests.fakes.aws_transcribe import FakeTranscribe, Said
from tests.fakes.twilio_api import FakeTwilioAPI
from tests.test_voice_cloud import to_ogg_opus
from tests.test_voice_turn import Twilio, fetch_own_media
from voice.audio import decode_to_pcm16k
from voice.aws import AwsAccess
from voice.calls import PhoneSpeech, wav16k
from voice.stt.base import SpeechError
from voice.stt.transcribe import CHUNK_BYTES, TranscribeSTT
from voice.tts.polly import MAX_CHARS, PollyTTS, split_text

LEOPARD = SHARED_DATA / "speech" / "picovoice-leopard" / "resources" / "audio_samples"
SPANISH_WAV = LEOPARD / "test_es.wav"
PORTUGUESE_WAV = LEOPARD / "test_pt.wav"


def wav_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return w.readframes(w.getnframes())


@pytest.fixture(scope="session")
def spanish_note() -> bytes:
    if not SPANISH_WAV.is_file():
        pytest.skip(f"shared speech data missing: {SPANISH_WAV}")
    return to_ogg_opus(SPANISH_WAV)


# ---------------------------------------------------------------------- Transcribe


@pytest.fixture
async def transcribe() -> AsyncIterator[FakeTranscribe]:
    fake = FakeTranscribe()
    await fake.start()
    yield fake
    await fake.close()


def access_for(fake: FakeTranscribe, **changes: str) -> AwsAccess:
    fields = {
        "region": fake.region,
        "access_key_id": fake.access_key,
        "secret_access_key": fake.secret_key,
        "endpoint_url": fake.url,
        "ca_bundle": fake.ca_file,
    } | changes
    return AwsAccess(**fields)


@pytest.fixture
async def transcribe_stt(transcribe: FakeTranscribe) -> AsyncIterator[TranscribeSTT]:
    stt = TranscribeSTT(access=access_for(transcribe), timeout_s=10)
    yield stt
    await stt.close()


async def test_transcribe_streams_signed_pcm_and_identifies_the_language(
    transcribe: FakeTranscribe, transcribe_stt: TranscribeSTT, spanish_note: bytes
) -> None:
    transcribe.answer(
        Said("Hola, quiero hacer un pedido.", "es-ES", 0.9), Said("¿Cuánto cuesta?", "es-ES", 0.6)
    )
    transcript = await transcribe_stt.transcribe(
        spanish_note, "audio/ogg; codecs=opus", ["en", "es", "pt"]
    )
    assert transcript.text == "Hola, quiero hacer un pedido. ¿Cuánto cuesta?"
    assert transcript.language == "es"
    assert transcript.confidence == pytest.approx((5 * 0.9 + 2 * 0.6) / 7)
    assert transcript.duration_s == pytest.approx(8.66, abs=0.05)
    assert transcript.engine == "transcribe"
    assert transcript.language_confidence == 0.0  # the SDK drops identification scores

    [stream] = transcribe.streams
    assert stream.headers[":path"] == "/stream-transcription"
    assert stream.access_key == transcribe.access_key and stream.region == "eu-west-1"
    assert stream.signature_ok and stream.chunk_signatures_ok  # SigV4, recomputed
    assert stream.header("media-encoding") == "pcm" and stream.sample_rate == 16000
    assert stream.header("identify-language").lower() == "true"
    assert stream.language_options == ["en-US", "es-ES", "pt-BR"]
    assert stream.header("preferred-language") == "en-US"
    assert not stream.header("language-code")
    pcm = decode_to_pcm16k(spanish_note, "audio/ogg")[0]
    assert stream.audio_bytes == 2 * len(pcm)  # the whole note, 16-bit
    assert stream.audio_events == math.ceil(stream.audio_bytes / CHUNK_BYTES)
    assert stream.event_types == {"AudioEvent"} and stream.ended
    assert stream.peak > 3000  # speech, not silence


async def test_transcribe_one_language_is_fixed_and_a_call_utterance_goes_as_is(
    transcribe: FakeTranscribe,
) -> None:
    if not PORTUGUESE_WAV.is_file():
        pytest.skip(f"shared speech data missing: {PORTUGUESE_WAV}")
    pcm = wav_pcm(PORTUGUESE_WAV)
    stt = TranscribeSTT(access=access_for(transcribe), language_codes={"pt": "pt-PT"})
    try:
        transcribe.answer(Said("Olá, tudo bem?", "pt-PT", 0.8))
        # a streamed phone call hands the engine each utterance as a 16-kHz WAV
        phone = PhoneSpeech(stt, tts=None, voices={})  # type: ignore[arg-type]
        utterance = Utterance(pcm16k=pcm, start_s=0.0, end_s=len(pcm) / 32000)
        heard = await phone.transcribe(utterance, ["pt"])
        transcribe.answer(Said("Olá", "pt-PT"))
        transcript = await stt.transcribe(wav16k(pcm), "audio/wav", ["pt", "pt"])
    finally:
        await stt.close()
    assert (heard.text, heard.language) == ("Olá, tudo bem?", "pt")
    assert heard.confidence == pytest.approx(0.8)
    assert transcript.language_confidence == 1.0
    first, second = transcribe.streams
    for stream in (first, second):
        assert stream.header("language-code") == "pt-PT"
        assert not stream.header("identify-language") and not stream.language_options
        assert stream.audio_bytes == len(pcm)  # the WAV's samples, not re-encoded
        assert stream.peak == int(np.abs(np.frombuffer(pcm, "<i2").astype(np.int32)).max())


async def test_transcribe_one_dialect_per_language_at_most_five(
    transcribe: FakeTranscribe, transcribe_stt: TranscribeSTT, spanish_note: bytes
) -> None:
    transcribe.answer("Hola")
    langs = ["es", "es-MX", "en", "pt", "fr", "de", "it"]
    transcript = await transcribe_stt.transcribe(spanish_note, "audio/ogg", langs)
    assert transcript.language == "es"
    assert transcribe.streams[0].language_options == ["es-ES", "en-US", "pt-BR", "fr-FR", "de-DE"]


async def test_transcribe_silence_is_an_empty_transcript(
    transcribe: FakeTranscribe, transcribe_stt: TranscribeSTT
) -> None:
    transcribe.answer("this is not said")
    silence = wav16k(b"\x00\x00" * 16000 * 2)
    transcript = await transcribe_stt.transcribe(silence, "audio/wav", ["es", "en"])
    assert (transcript.text, transcript.language, transcript.confidence) == ("", None, 0.0)
    assert transcript.duration_s == pytest.approx(2.0)
    assert transcribe.streams[0].audio_bytes == 64000


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (429, "LimitExceededException", True),
        (503, "ServiceUnavailableException", True),
        (500, "InternalFailureException", True),
        (400, "BadRequestException", False),
        (403, "AccessDeniedException", False),
    ],
)
async def test_transcribe_http_errors(
    transcribe: FakeTranscribe,
    transcribe_stt: TranscribeSTT,
    spanish_note: bytes,
    status: int,
    kind: str,
    transient: bool,
) -> None:
    transcribe.fail(status, kind, "scripted")
    with pytest.raises(SpeechError) as e:
        await transcribe_stt.transcribe(spanish_note, "audio/ogg", ["es", "en"])
    assert e.value.transient is transient
    assert kind in str(e.value)


@pytest.mark.parametrize(
    ("kind", "transient"),
    [("InternalFailureException", True), ("BadRequestException", False)],
)
async def test_transcribe_exception_events_in_the_stream(
    transcribe: FakeTranscribe,
    transcribe_stt: TranscribeSTT,
    spanish_note: bytes,
    kind: str,
    transient: bool,
) -> None:
    transcribe.fail_in_stream(kind, "went wrong")
    with pytest.raises(SpeechError) as e:
        await transcribe_stt.transcribe(spanish_note, "audio/ogg", ["es", "en"])
    assert e.value.transient is transient and "went wrong" in str(e.value)
    assert transcribe.streams[0].ended  # the audio had all arrived


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"secret_access_key": "wrong"}, "InvalidSignatureException"),
        ({"access_key_id": "AKIDUNKNOWN"}, "UnrecognizedClientException"),
    ],
    ids=["bad-secret", "unknown-key"],
)
async def test_transcribe_bad_credentials_are_permanent(
    transcribe: FakeTranscribe, spanish_note: bytes, changes: dict[str, str], expected: str
) -> None:
    stt = TranscribeSTT(access=access_for(transcribe, **changes))
    try:
        with pytest.raises(SpeechError) as e:
            await stt.transcribe(spanish_note, "audio/ogg", ["es", "en"])
    finally:
        await stt.close()
    assert not e.value.transient
    assert expected in str(e.value)
    assert "wrong" not in str(e.value)  # no secret in the error


async def test_transcribe_refused_connection_is_transient(
    transcribe: FakeTranscribe, spanish_note: bytes
) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    stt = TranscribeSTT(access=access_for(transcribe, endpoint_url=url))
    try:
        with pytest.raises(SpeechError) as e:
            await stt.transcribe(spanish_note, "audio/ogg", ["es"])
    finally:
        await stt.close()
    assert e.value.transient


async def test_transcribe_unreadable_audio_is_permanent(transcribe_stt: TranscribeSTT) -> None:
    with pytest.raises(SpeechError) as e:
        await transcribe_stt.transcribe(b"OggS\x00garbage" * 40, "audio/ogg", ["es"])
    assert not e.value.transient
    with pytest.raises(SpeechError):
        await transcribe_stt.transcribe(b"", "audio/ogg", ["es"])


# ---------------------------------------------------------------------------- Polly


@pytest.fixture(scope="session")
def moto_polly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoPolly]:
    moto = MotoPolly(str(tmp_path_factory.mktemp("moto") / "recording.jsonl"))
    moto.start()
    yield moto
    moto.stop()


MOTO_ACCESS = {"region": "us-east-1", "access_key_id": "AKIDMOTO", "secret_access_key": "moto"}


@pytest.fixture
async def polly(moto_polly: MotoPolly) -> AsyncIterator[PollyTTS]:
    moto_polly.reset()
    engine = PollyTTS(access=AwsAccess(**MOTO_ACCESS, endpoint_url=moto_polly.url))
    yield engine
    await engine.close()


async def test_polly_asks_for_neural_pcm_in_the_languages_voice(
    moto_polly: MotoPolly, polly: PollyTTS
) -> None:
    text = 'Hola & <bienvenida> a "La Tienda"'
    speech = await polly.synthesize(text, "es")
    assert speech.audio.startswith(b"OggS") and b"OpusHead" in speech.audio
    assert (speech.content_type, speech.engine, speech.voice) == ("audio/ogg", "polly", "Lucia")
    assert speech.duration_s == pytest.approx(4 / 16000)  # moto's 8 bytes: 4 samples
    [request] = moto_polly.syntheses()
    assert request["body"] == {
        "Engine": "neural",
        "OutputFormat": "pcm",
        "SampleRate": "16000",
        "Text": text,  # plain text: nothing escaped, nothing lost
        "TextType": "text",
        "VoiceId": "Lucia",
    }
    auth = request["headers"]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDMOTO/")
    assert "/us-east-1/polly/aws4_request" in auth


async def test_polly_voices_per_language_and_locale(fake_polly: FakePolly) -> None:
    # the fake checks voice ids against Polly's model (moto 5.2 refuses Lea and Ines)
    access = AwsAccess(**MOTO_ACCESS, endpoint_url=fake_polly.url)
    engines = [
        PollyTTS(access=access),
        PollyTTS(access=access, language_codes={"pt": "pt-PT", "es": "es-MX"}),
        PollyTTS(access=access, voices={"es": "Sergio", "EN": "Matthew"}),
    ]
    voices = []
    try:
        for engine in engines:
            for language in ("pt", "es", "en", "fr", "de", "it"):
                voices.append((await engine.synthesize("Olá", language)).voice)
        voices.append((await engines[0].synthesize("Hello", "en", voice="Amy")).voice)
    finally:
        for engine in engines:
            await engine.close()
    assert voices == [
        *("Camila", "Lucia", "Joanna", "Lea", "Vicki", "Bianca"),
        *("Ines", "Mia", "Joanna", "Lea", "Vicki", "Bianca"),
        *("Camila", "Sergio", "Matthew", "Lea", "Vicki", "Bianca"),
        "Amy",
    ]
    assert [r["body"]["VoiceId"] for r in fake_polly.requests] == voices


async def test_polly_splits_a_long_reply(moto_polly: MotoPolly, polly: PollyTTS) -> None:
    sentence = "Enviamos a toda España en 48 horas y sin coste desde cincuenta euros. "
    text = sentence * 60  # ~4,300 characters: over Polly's 3,000
    await polly.synthesize(text, "es")
    texts = [r["body"]["Text"] for r in moto_polly.syntheses()]
    assert len(texts) == 2 and all(len(t) <= MAX_CHARS for t in texts)
    assert " ".join(texts) == text.strip()
    assert split_text("a" * 7000, 3000) == ["a" * 3000, "a" * 3000, "a" * 1000]


async def test_polly_unknown_voice_is_permanent(moto_polly: MotoPolly, polly: PollyTTS) -> None:
    with pytest.raises(SpeechError) as e:
        await polly.synthesize("Hola", "es", voice="es-ES-ElviraNeural")
    assert not e.value.transient and "InvalidParameterValue" in str(e.value)
    with pytest.raises(SpeechError) as e:
        await polly.synthesize("  ", "es")
    assert not e.value.transient


@pytest.fixture
async def fake_polly() -> AsyncIterator[FakePolly]:
    fake = FakePolly(wav_pcm(SPANISH_WAV) if SPANISH_WAV.is_file() else b"\x01\x00" * 16000)
    await fake.start()
    yield fake
    await fake.close()


async def test_polly_answer_becomes_an_opus_voice_note(fake_polly: FakePolly) -> None:
    engine = PollyTTS(access=AwsAccess(**MOTO_ACCESS, endpoint_url=fake_polly.url))
    try:
        speech = await engine.synthesize("¿Cuál es el horario?", "es")
    finally:
        await engine.close()
    assert speech.duration_s == pytest.approx(len(fake_polly.pcm) / 32000)
    samples, duration = decode_to_pcm16k(speech.audio, speech.content_type)
    assert duration == pytest.approx(speech.duration_s, abs=0.05)  # a playable voice note
    assert np.abs(samples).max() > 0.1
    [request] = fake_polly.requests
    assert request["body"]["VoiceId"] == "Lucia"


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (429, "ThrottlingException", True),
        (500, "ServiceFailureException", True),
        (503, "ServiceUnavailableException", True),
        (400, "ThrottlingException", True),  # Polly's own throttling code, whatever status
        (403, "UnrecognizedClientException", False),
        (400, "EngineNotSupportedException", False),
        (400, "TextLengthExceededException", False),
    ],
)
async def test_polly_errors(fake_polly: FakePolly, status: int, kind: str, transient: bool) -> None:
    fake_polly.fail(status, kind)
    engine = PollyTTS(access=AwsAccess(**MOTO_ACCESS, endpoint_url=fake_polly.url))
    try:
        with pytest.raises(SpeechError) as e:
            await engine.synthesize("Hola", "es")
    finally:
        await engine.close()
    assert e.value.transient is transient and kind in str(e.value)
    assert len(fake_polly.requests) == 1  # botocore's own retries are off


async def test_polly_refused_connection_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    engine = PollyTTS(access=AwsAccess(**MOTO_ACCESS, endpoint_url=url), timeout_s=5)
    try:
        with pytest.raises(SpeechError) as e:
            await engine.synthesize("Hola", "es")
    finally:
        await engine.close()
    assert e.value.transient


# ------------------------------------------------------------------------- settings


def test_aws_settings_are_checked_at_once() -> None:
    env = base_env(Path("unused")) | {
        "HABLA_STT": "transcribe",
        "HABLA_TTS": "polly",
        "AWS_ACCESS_KEY_ID": "AKIDONLY",
        "HABLA_TRANSCRIBE_ENDPOINT_URL": "http://127.0.0.1:1",
        "HABLA_POLLY_ENDPOINT_URL": "ftp://x",
        "AWS_CA_BUNDLE": "/nonexistent/ca.pem",
    }
    with pytest.raises(SettingsError) as e:
        load_settings(env=env)
    text = "\n".join(e.value.problems)
    for expected in (
        "AWS_REGION is required",
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together",
        "HABLA_POLLY_ENDPOINT_URL: an http(s):// URL",
        "Amazon Transcribe streaming is HTTP/2 over TLS",
        "AWS_CA_BUNDLE: no such file",
    ):
        assert expected in text, text
    assert "AKIDONLY" not in text


def test_aws_secrets_come_from_the_environment_only(tmp_path: Path) -> None:
    settings_file = tmp_path / "habla.yml"
    settings_file.write_text("voice:\n  aws_secret_access_key: s3cr3t\n")
    env = base_env(Path("unused")) | {"HABLA_SETTINGS": str(settings_file)}
    with pytest.raises(SettingsError) as e:
        load_settings(env=env)
    assert "aws_secret_access_key" in str(e.value) and "s3cr3t" not in str(e.value)
    access = AwsAccess("eu-west-1", "AKID", "s3cr3t", "token")
    assert "s3cr3t" not in repr(access) and "token" not in repr(access)


# ---------------------------------------------------------------------- end to end


async def test_voice_note_heard_by_transcribe_and_answered_by_polly(
    make_server: ServerFactory,
    twilio_api: FakeTwilioAPI,
    transcribe: FakeTranscribe,
    moto_polly: MotoPolly,
    spanish_note: bytes,
) -> None:
    moto_polly.reset()
    env = base_env(Path("unused"), twilio_api.url) | {
        "HABLA_STT": "transcribe",
        "HABLA_TTS": "polly",
        "AWS_REGION": transcribe.region,
        "AWS_ACCESS_KEY_ID": transcribe.access_key,
        "AWS_SECRET_ACCESS_KEY": transcribe.secret_key,
        "HABLA_TRANSCRIBE_ENDPOINT_URL": transcribe.url,
        "AWS_CA_BUNDLE": transcribe.ca_file,
        "HABLA_POLLY_ENDPOINT_URL": moto_polly.url,
    }
    env.pop("HABLA_DATA_DIR")
    client, runtime = await make_server(env=env)
    transcribe.answer(Said("¿Cuál es el horario de la tienda?", "es-ES", 0.93))
    sent = await Twilio(client, runtime, twilio_api).voice(spanish_note)

    [stream] = transcribe.streams
    assert stream.signature_ok and stream.chunk_signatures_ok and stream.ended
    assert stream.language_options == ["en-US", "es-ES", "pt-BR"]  # the bot's languages
    assert stream.sample_rate == 16000 and stream.audio_bytes > 8 * 32000  # the 8.7-s note
    [synthesis] = moto_polly.syntheses()
    assert synthesis["body"]["VoiceId"] == "Lucia" and synthesis["body"]["Engine"] == "neural"
    assert "lunes a viernes" in synthesis["body"]["Text"]
    assert f"/{transcribe.region}/polly/aws4_request" in synthesis["headers"]["Authorization"]
    assert any(m.media_urls for m in sent)  # the voice note
    assert any("lunes a viernes" in m.body for m in sent)  # and the text
    [note] = [m for m in sent if m.media_urls]
    status, body, content_type = await fetch_own_media(client, note.media_urls[0])
    assert status == 200 and content_type == "audio/ogg" and body.startswith(b"OggS")
