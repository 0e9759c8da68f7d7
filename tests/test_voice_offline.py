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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from voice.audio import (
    AudioError,
    decode_to_pcm16k,
    duration_of,
    ogg_opus_duration,
    pcm_to_ogg_opus,
)
from voice.models import PART_PACKAGES
from voice.stt.base import SpeechError, Transcript
from voice.stt.whisper import WhisperSTT, confidence
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
    stt: WhisperSTT, note_es: bytes, leopard: dict[str, dict[str, Any]]
) -> None:
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


async def test_language_is_chosen_among_the_bots_languages(stt: WhisperSTT) -> None:
    note = pcm_to_ogg_opus(wav("test_pt.wav"))
    free = await stt.transcribe(note, "audio/ogg", [])
    assert free.language == "pt"
    restricted = await stt.transcribe(note, "audio/ogg", ["en", "es"])
    assert restricted.language in ("en", "es")
    assert 0 < restricted.language_confidence <= 1
    forced = await stt.transcribe(note, "audio/ogg", ["pt-BR"])  # one language: no detection
    assert forced.language == "pt" and forced.language_confidence == 1.0
    assert "raposa" in forced.text.lower()


async def test_silence_is_an_empty_transcript(stt: WhisperSTT) -> None:
    silence = pcm_to_ogg_opus(np.zeros(3 * 16_000, dtype=np.float32))
    t = await stt.transcribe(silence, "audio/ogg", BOT_LANGUAGES)
    assert t.text == "" and t.confidence == 0.0
    assert t.duration_s == pytest.approx(3.0, abs=0.03)
    click = pcm_to_ogg_opus(np.full(400, 0.5, dtype=np.float32))  # 25 ms
    assert (await stt.transcribe(click, "audio/ogg", ["es"])).text == ""


async def test_background_noise_is_empty_or_not_trusted(stt: WhisperSTT) -> None:
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


async def test_round_trip_espeak_to_whisper(stt: WhisperSTT, tts: EspeakTTS) -> None:
    """espeak's Spanish is robotic and Whisper base hears about half the words of harder
    sentences (bench.voice); this everyday one comes back whole, so most words must."""
    text = "Gracias por tu compra, hasta pronto."
    speech = await tts.synthesize(text, "es")
    heard = await stt.transcribe(speech.audio, speech.content_type, BOT_LANGUAGES)
    assert heard.language == "es"
    said = plain(text).split()
    back = set(plain(heard.text).split())
    assert sum(w in back for w in said) / len(said) >= 0.6, heard.text
