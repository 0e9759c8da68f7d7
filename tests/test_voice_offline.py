"""The offline voice engines on real speech: ffmpeg conversions, Whisper base (int8)
on Picovoice Leopard's test clips sent as WhatsApp voice notes, espeak-ng replies, and
a round trip through both. The Whisper model loads once for the module."""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import struct
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from runtime.settings import load_settings
from voice.audio import (
    AudioError,
    decode_to_pcm16k,
    duration_of,
    ogg_opus_duration,
    pcm_to_ogg_opus,
)
from voice.models import PART_PACKAGES
from voice.stt import whisper
from voice.stt.base import SpeechError, Transcript
from voice.stt.whisper import WhisperSTT, confidence, degenerate
from voice.tts.espeak import EspeakTTS

PROJECT = Path(__file__).resolve().parents[1]
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
LEOPARD = SPEECH / "picovoice-leopard" / "resources"
CACHE = PROJECT / ".habla" / "models" / "whisper-base"
BOT_LANGUAGES = ["es", "en", "pt", "fr", "de", "it"]
MIN_CONFIDENCE = 0.35  # runtime.settings VoiceSettings.min_confidence


def words(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed (for WER)."""
    kept = (" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join("".join(kept).split())


def plain(text: str) -> str:
    """:func:`words` without accents ("qué" and "que" count as the same word)."""
    decomposed = unicodedata.normalize("NFKD", words(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(words(reference), words(hypothesis) or "<empty>"))


@pytest.fixture(scope="module")
def leopard() -> dict[str, dict[str, Any]]:
    data = json.loads((LEOPARD / ".test" / "test_data.json").read_text(encoding="utf-8"))
    return {t["language"]: t for t in data["tests"]["language_tests"]}


def wav(name: str) -> bytes:
    return (LEOPARD / "audio_samples" / name).read_bytes()


@pytest.fixture(scope="module")
def note_es() -> bytes:
    """test_es.wav as a WhatsApp voice note."""
    return pcm_to_ogg_opus(wav("test_es.wav"))


@pytest.fixture(scope="module")
async def stt() -> AsyncIterator[WhisperSTT]:
    engine = WhisperSTT(cache_dir=CACHE, beam_size=5)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(params=["short", "full"])
def engine(stt: WhisperSTT, request: pytest.FixtureRequest) -> Iterator[WhisperSTT]:
    """The shared engine encoding only the utterance (the default), then the 30-s window."""
    stt.short_encode = request.param == "short"
    try:
        yield stt
    finally:
        stt.short_encode = True


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


# ---------------------------------------------------------------------------- audio


def opus_head(ogg: bytes) -> tuple[int, int]:
    """(channels, input sample rate) from the OpusHead packet."""
    at = ogg.index(b"OpusHead")
    return ogg[at + 9], struct.unpack_from("<I", ogg, at + 12)[0]


def test_wav_to_ogg_opus_and_back() -> None:
    data = wav("test_es.wav")
    ogg = pcm_to_ogg_opus(data)
    assert ogg.startswith(b"OggS") and b"OpusHead" in ogg
    assert opus_head(ogg) == (1, 48_000)  # mono, 48 kHz like WhatsApp's own voice notes
    assert len(ogg) < len(data) / 5  # 24 kb/s instead of 256 kb/s
    assert duration_of(data, "audio/wav") == pytest.approx(8.664, abs=0.001)
    assert duration_of(ogg, "audio/ogg; codecs=opus") == pytest.approx(8.664, abs=0.03)

    samples, seconds = decode_to_pcm16k(ogg, "audio/ogg; codecs=opus")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert seconds == pytest.approx(8.664, abs=0.03) and len(samples) == round(seconds * 16_000)
    original, _ = decode_to_pcm16k(data, "audio/wav")
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(original**2))), rel=0.1)


def test_samples_to_ogg_opus_keep_their_duration() -> None:
    tone = np.sin(2 * math.pi * 440 * np.arange(22_050 * 2) / 22_050) * 0.3
    for samples in (tone.astype(np.float32), (tone * 32767).astype(np.int16)):
        ogg = pcm_to_ogg_opus(samples, 22_050)
        assert opus_head(ogg)[0] == 1
        assert ogg_opus_duration(ogg) == pytest.approx(2.0, abs=0.03)
        assert decode_to_pcm16k(ogg, "audio/ogg")[1] == pytest.approx(2.0, abs=0.03)


def test_mislabelled_audio_is_still_decoded(note_es: bytes) -> None:
    _, seconds = decode_to_pcm16k(note_es, "audio/mpeg")
    assert seconds == pytest.approx(8.664, abs=0.03)


@pytest.mark.parametrize(
    "data, content_type, reason",
    [
        (b"", "audio/ogg", "0 bytes"),
        (os.urandom(4096), "audio/ogg", "ffmpeg"),
        (b"OggS" + os.urandom(4096), "audio/ogg; codecs=opus", "ffmpeg"),
        (os.urandom(4096), "audio/amr", "ffmpeg"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "unsupported content type"),
    ],
)
def test_bad_audio_is_an_audio_error(data: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(AudioError, match=reason):
        decode_to_pcm16k(data, content_type)
    with pytest.raises(AudioError):
        duration_of(data, content_type)


async def test_bad_audio_is_a_permanent_speech_error(stt: WhisperSTT) -> None:
    for data, content_type in ((b"", "audio/ogg"), (os.urandom(2048), "audio/ogg")):
        with pytest.raises(SpeechError) as caught:
            await stt.transcribe(data, content_type, ["es"])
        assert not caught.value.transient
    with pytest.raises(SpeechError, match="unsupported content type"):
        await stt.transcribe(wav("test_es.wav"), "image/png", ["es"])


# ---------------------------------------------------------------------------- whisper


def test_the_model_is_assembled_once_into_the_cache(stt: WhisperSTT) -> None:
    parts = (
        Path(str(importlib.resources.files(package))) / "data" / f"model.bin.part{i}"
        for i, package in enumerate(PART_PACKAGES, 1)
    )
    assert (CACHE / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert {"config.json", "tokenizer.json", "vocabulary.json"} <= {p.name for p in CACHE.iterdir()}
    assert not list(CACHE.parent.glob(f".{CACHE.name}-*"))  # no half-built copies


async def test_whisper_transcribes_a_spanish_voice_note(
    engine: WhisperSTT, note_es: bytes, leopard: dict[str, dict[str, Any]]
) -> None:
    stt = engine
    short, fallbacks = stt.short_encodes, stt.fallbacks
    t = await stt.transcribe(note_es, "audio/ogg; codecs=opus", BOT_LANGUAGES)
    assert isinstance(t, Transcript) and t.engine == "whisper"
    assert t.language == "es" and t.language_confidence > 0.9
    assert wer(leopard["es"]["transcript"], t.text) <= 0.2, t.text
    assert 0.5 < t.confidence <= 1
    assert t.duration_s == pytest.approx(8.664, abs=0.03)
    # identifying the language reuses its encoder pass for decoding: same result as
    # when the language is given and nothing is identified
    given = await stt.transcribe(note_es, "audio/ogg", ["es"])
    assert (given.text, given.confidence) == (t.text, t.confidence)
    # the short path was taken (and kept: nothing looked degenerate), or not at all
    assert stt.short_encodes - short == (2 if stt.short_encode else 0)
    assert stt.fallbacks == fallbacks


async def test_language_is_chosen_among_the_bots_languages(engine: WhisperSTT) -> None:
    stt = engine
    note = pcm_to_ogg_opus(wav("test_pt.wav"))
    free = await stt.transcribe(note, "audio/ogg", [])
    assert free.language == "pt"
    restricted = await stt.transcribe(note, "audio/ogg", ["en", "es"])
    assert restricted.language in ("en", "es")
    assert 0 < restricted.language_confidence <= 1
    forced = await stt.transcribe(note, "audio/ogg", ["pt-BR"])  # one language: no detection
    assert forced.language == "pt" and forced.language_confidence == 1.0
    assert "raposa" in forced.text.lower()


async def test_silence_is_an_empty_transcript(engine: WhisperSTT) -> None:
    stt = engine
    silence = pcm_to_ogg_opus(np.zeros(3 * 16_000, dtype=np.float32))
    t = await stt.transcribe(silence, "audio/ogg", BOT_LANGUAGES)
    assert t.text == "" and t.confidence == 0.0
    assert t.duration_s == pytest.approx(3.0, abs=0.03)
    click = pcm_to_ogg_opus(np.full(400, 0.5, dtype=np.float32))  # 25 ms
    assert (await stt.transcribe(click, "audio/ogg", ["es"])).text == ""


async def test_background_noise_is_empty_or_not_trusted(engine: WhisperSTT) -> None:
    stt = engine
    t = await stt.transcribe(wav("empty.wav"), "audio/wav", ["es", "en"])  # room noise, 8 s
    assert t.text == "" or t.confidence < MIN_CONFIDENCE, t


def test_confidence_formula() -> None:
    class Seg:
        def __init__(self, tokens: int, avg_logprob: float, no_speech_prob: float) -> None:
            self.tokens = [0] * tokens
            self.avg_logprob, self.no_speech_prob = avg_logprob, no_speech_prob

    assert confidence([]) == 0.0
    assert confidence([Seg(10, 0.0, 0.0)]) == 1.0
    mixed = confidence([Seg(30, math.log(0.9), 0.0), Seg(10, math.log(0.5), 0.5)])
    assert mixed == pytest.approx((30 * 0.9 + 10 * 0.25) / 40)


@pytest.mark.parametrize("clip", ["test_en", "test_fr", "test_de", "test_it", "test_pt"])
async def test_short_encoding_hears_the_other_languages_like_the_full_window(
    stt: WhisperSTT, leopard: dict[str, dict[str, Any]], clip: str
) -> None:
    """Leopard's other clips: short encoding keeps the language and a WER within 0.05 of
    the full window's (bench.voice has the numbers), without falling back."""
    note = pcm_to_ogg_opus(wav("test.wav" if clip == "test_en" else f"{clip}.wav"))
    language = clip[-2:]
    transcript = leopard[language]["transcript"]
    fallbacks = stt.fallbacks
    short = await stt.transcribe(note, "audio/ogg", BOT_LANGUAGES)
    assert stt.fallbacks == fallbacks, short.text
    stt.short_encode = False
    try:
        full = await stt.transcribe(note, "audio/ogg", BOT_LANGUAGES)
    finally:
        stt.short_encode = True
    assert short.language == full.language == language
    assert wer(transcript, short.text) <= wer(transcript, full.text) + 0.05, short.text
    assert short.confidence > MIN_CONFIDENCE


def test_short_encoding_frames() -> None:
    engine = WhisperSTT(cache_dir=CACHE)
    assert engine.short_encode and engine.encode_margin_s == 3.0  # the defaults
    assert engine.short_frames(int(2.3 * 16_000)) == 600  # 2.3 s + 3 s, rounded up
    assert engine.short_frames(2 * 16_000) == 500
    assert engine.short_frames(25 * 16_000) == 2800
    assert engine.short_frames(int(25.5 * 16_000)) is None  # long clips: the full window
    engine.encode_margin_s = 0.0
    assert engine.short_frames(int(2.3 * 16_000)) == 300
    engine.short_encode = False
    assert engine.short_frames(16_000) is None


def test_short_encoding_settings() -> None:
    env = {"HABLA_WHISPER_SHORT_ENCODE": "false", "HABLA_WHISPER_ENCODE_MARGIN_S": "2"}
    engine = WhisperSTT.from_settings(load_settings(env))
    assert not engine.short_encode and engine.encode_margin_s == 2.0
    default = WhisperSTT.from_settings(load_settings({}))
    assert default.short_encode and default.encode_margin_s == 3.0


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("Thank you for watching. " * 4, 3.0),  # a phrase loop
        ("Gracias, gracias, gracias, gracias, gracias.", 3.0),  # one word, 5 times
        ("jajajajajajajajaja", 2.0),
        ("ありがとうございます。" * 3, 4.0),  # no spaces
        ("the the the the the the cat", 2.0),
        ("Las arenas son blanquecinas y " + "de grano medio, " * 3, 5.0),
        # what Whisper base said with a 0–0.5 s margin: the sentence twice
        ("Uma raposa velha não consegue aprender nenhum ofício. " * 2, 5.0),
        ("He was not an ill-sposed young man. He was not an ill-sposed young man. He", 3.0),
        ("客観的実在の判断的知識が整理する客観的実在の判断的知識が整理する", 5.0),
    ],
)
def test_repetition_loops_are_degenerate(text: str, seconds: float) -> None:
    assert degenerate(text, seconds) == "repetition loop"


def test_degenerate_transcripts() -> None:
    assert degenerate("", 3.0) == "empty"
    assert degenerate("  ", 3.0) == "empty"
    sentence = "Las arenas son blanquecinas, de grano medio y tienen muy poca asistencia."
    assert degenerate(sentence, 8.6) is None
    assert "characters for 1.0 s" in (degenerate(sentence, 1.0) or "")  # too long
    assert "token cap" in (degenerate(sentence, 8.6, tokens=40, max_tokens=40) or "")
    assert degenerate(sentence, 8.6, tokens=39, max_tokens=40) is None
    assert "log-probability" in (degenerate(sentence, 8.6, avg_logprob=-1.2) or "")
    assert degenerate(sentence, 8.6, avg_logprob=-0.4) is None
    # ordinary speech with a repeated word or two is not a loop
    for text in (
        "No, no, no, I said Tuesday.",
        "Sí, sí, claro que sí.",
        "Mi número es 600 123 456.",
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.",
    ):
        assert degenerate(text, 4.0) is None, text
    # faster-whisper's compression ratio (2.4) on text no loop pattern catches
    spread = " ".join(f"{w} uno dos tres cuatro cinco" for w in "abcdefghijklmnop")
    assert "compression ratio" in (degenerate(spread, 60.0) or "")


async def test_a_degenerate_short_transcript_is_redone_on_the_full_window(
    stt: WhisperSTT, note_es: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stt.short_encode = False
    try:
        full = await stt.transcribe(note_es, "audio/ogg", BOT_LANGUAGES)
    finally:
        stt.short_encode = True
    decode = stt._decode
    frames_seen: list[int | None] = []

    def looping(
        samples: Any, allowed: list[str], frames: int | None, max_tokens: int | None
    ) -> tuple[Any, list[Any]]:
        frames_seen.append(frames)
        result, segments = decode(samples, allowed, frames, max_tokens)
        if frames is None:
            return result, segments
        loop = "Las arenas son blanquecinas. " * 6  # what a broken decoder produces
        return whisper._Result(loop, result.language, 0.9, result.language_confidence), segments

    monkeypatch.setattr(stt, "_decode", looping)
    fallbacks = stt.fallbacks
    t = await stt.transcribe(note_es, "audio/ogg", BOT_LANGUAGES)
    short_frames, full_frames = frames_seen  # 8.7 s of speech + 3 s, then the 30-s window
    assert short_frames is not None and 1100 <= short_frames <= 1200 and full_frames is None
    assert stt.fallbacks == fallbacks + 1
    assert (t.text, t.language, t.confidence) == (full.text, full.language, full.confidence)


async def test_a_missing_model_folder_fails_at_start(tmp_path: Path) -> None:
    engine = WhisperSTT(model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(SpeechError, match="model.bin"):
        await engine.start()
    await engine.close()


# ---------------------------------------------------------------------------- espeak


async def test_espeak_speaks_spanish_as_a_voice_note(tts: EspeakTTS) -> None:
    text = "Hola, tu pedido llegará mañana por la tarde."
    speech = await tts.synthesize(text, "es")
    assert speech.content_type == "audio/ogg" and speech.engine == "espeak"
    assert speech.voice == "es"
    assert speech.audio.startswith(b"OggS") and opus_head(speech.audio)[0] == 1
    assert 1.5 < speech.duration_s < 5.0  # 8 words
    assert duration_of(speech.audio, "audio/ogg") == pytest.approx(speech.duration_s, abs=0.05)
    brazilian = await tts.synthesize(text, "pt", voice="pt-br")
    assert brazilian.voice == "pt-br"


async def test_espeak_rejects_what_it_cannot_say(tts: EspeakTTS) -> None:
    with pytest.raises(SpeechError, match="no voice"):
        await tts.synthesize("hello", "xx")
    with pytest.raises(SpeechError, match="no voice"):
        await tts.synthesize("hola", "es", voice="no-such-voice")
    with pytest.raises(SpeechError, match="empty"):
        await tts.synthesize("  ", "es")


async def test_round_trip_espeak_to_whisper(engine: WhisperSTT, tts: EspeakTTS) -> None:
    """espeak's Spanish is robotic and Whisper base hears about half the words of harder
    sentences (bench.voice); this everyday one comes back whole, so most words must."""
    stt = engine
    text = "Gracias por tu compra, hasta pronto."
    speech = await tts.synthesize(text, "es")
    heard = await stt.transcribe(speech.audio, speech.content_type, BOT_LANGUAGES)
    assert heard.language == "es"
    said = plain(text).split()
    back = set(plain(heard.text).split())
    assert sum(w in back for w in said) / len(said) >= 0.6, heard.text
