"""Phone audio building blocks (voice.telephony, voice.vad): μ-law 8 kHz ↔ PCM, 20 ms
framing for Twilio Media Streams, and streaming Silero VAD segmentation fed real speech
the way Twilio delivers it (8 kHz μ-law, 160-byte frames)."""

from __future__ import annotations

import base64
import json
import wave
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import SHARED_DATA
from voice.telephony import (
    FRAME_BYTES,
    ULAW_SILENCE,
    Framer,
    decode_payload,
    frame_ulaw,
    media_payload,
    pcm_to_ulaw8k,
    ulaw8k_to_pcm16k,
)
from voice.vad import (
    SAMPLE_RATE,
    Event,
    SpeechEnded,
    SpeechStarted,
    StreamingVAD,
    UtteranceSegmenter,
)

LEOPARD = SHARED_DATA / "speech" / "picovoice-leopard" / "resources"
Samples = npt.NDArray[np.float32]


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def read_wav(path: Path) -> Samples:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


@cache
def clip(name: str) -> tuple[Samples, float, float]:
    """A Leopard test clip and its speech span (first word start, last word end)."""
    meta = json.loads((LEOPARD / ".test" / "test_data.json").read_text())
    (test,) = [t for t in meta["tests"]["language_tests"] if t["audio_file"] == name]
    words = test["words"]
    return read_wav(LEOPARD / "audio_samples" / name), words[0]["start_sec"], words[-1]["end_sec"]


def quiet(seconds: float, seed: int = 0) -> Samples:
    """Line noise at about -66 dBFS: what a silent caller sounds like."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.0005).astype(np.float32)


def over_the_phone(pcm: Samples) -> list[Event]:
    """Encode as Twilio would, send 160-byte frames one by one through base64, decode
    with a streaming state, and segment; the stream's end flushes."""
    frames = frame_ulaw(pcm_to_ulaw8k(pcm, SAMPLE_RATE))
    segmenter = UtteranceSegmenter(min_speech_ms=250, min_silence_ms=600)
    state = None
    events: list[Event] = []
    for frame in frames:
        chunk, state = ulaw8k_to_pcm16k(decode_payload(media_payload(frame)), state)
        assert abs(len(chunk) - 2 * FRAME_BYTES) <= 1  # ratecv may hold back a sample
        events += segmenter.feed(chunk)
    return events + segmenter.flush()


# --- μ-law and framing ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_ulaw_round_trip_keeps_a_sine(rate: int) -> None:
    tone = sine(440, 1.0, rate)
    ulaw = pcm_to_ulaw8k(tone, rate)
    assert len(ulaw) == 8000  # one second of 8 kHz, one byte a sample
    back, _ = ulaw8k_to_pcm16k(ulaw)
    assert abs(len(back) - 16000) <= 1
    ref = sine(440, 1.0, 16_000)[: len(back)]
    # ratecv's linear interpolation may shift by a sample or two: align before comparing
    m = len(back) - 200

    def shifted(k: int) -> Samples:
        return back[100 + k : 100 + k + m] - ref[100 : 100 + m]

    err = min((shifted(k) for k in range(-2, 3)), key=lambda e: float(np.abs(e).mean()))
    assert np.abs(err).max() < 0.05  # μ-law quantisation + interpolation at 440 Hz
    assert np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(ref**2)) < 0.03  # SNR > 30 dB


def test_int16_and_float_input_encode_alike() -> None:
    tone = sine(300, 0.2, 8000)
    as_int = np.round(tone * 32767).astype(np.int16)
    assert pcm_to_ulaw8k(tone, 8000) == pcm_to_ulaw8k(as_int, 8000)
    assert pcm_to_ulaw8k(as_int.tobytes(), 8000) == pcm_to_ulaw8k(as_int, 8000)


def test_streaming_decode_equals_decode_at_once() -> None:
    ulaw = pcm_to_ulaw8k(sine(1000, 0.5, 16_000), 16_000)
    whole, _ = ulaw8k_to_pcm16k(ulaw)
    parts, state = [], None
    for frame in frame_ulaw(ulaw):
        part, state = ulaw8k_to_pcm16k(frame, state)
        parts.append(part)
    assert np.array_equal(np.concatenate(parts), whole)


def test_zero_encodes_to_ulaw_silence() -> None:
    assert pcm_to_ulaw8k(np.zeros(80, dtype=np.int16), 8000) == bytes([ULAW_SILENCE]) * 80


def test_frames_are_160_bytes_and_the_last_is_padded_with_silence() -> None:
    data = bytes(range(256)) * 2  # 512 bytes = 3 frames + 32
    frames = frame_ulaw(data)
    assert [len(f) for f in frames] == [FRAME_BYTES] * 4
    assert b"".join(frames)[: len(data)] == data
    assert frames[-1][32:] == bytes([ULAW_SILENCE]) * (FRAME_BYTES - 32)
    assert frame_ulaw(b"") == []
    assert frame_ulaw(b"\x00" * FRAME_BYTES) == [b"\x00" * FRAME_BYTES]  # no extra frame


def test_framer_streams_across_pushes() -> None:
    framer = Framer()
    assert framer.push(b"\x01" * 100) == []
    assert framer.pending == 100
    (payload,) = framer.payloads(b"\x02" * 100)
    assert base64.b64decode(payload) == b"\x01" * 100 + b"\x02" * 60
    assert len(payload) == 216  # base64 of 160 bytes
    assert framer.pending == 40
    assert framer.flush() == b"\x02" * 40 + b"\xff" * 120
    assert framer.flush() is None


# --- streaming VAD ----------------------------------------------------------------------


def test_vad_gives_the_same_probabilities_whatever_the_chunk_size() -> None:
    audio, _, _ = clip("test_pt.wav")
    audio = audio[: 512 * 60]
    vad = StreamingVAD()
    at_once = vad.feed(audio)
    assert len(at_once) == 60
    vad.reset()
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < len(audio):
        n = int(rng.integers(1, 1500))
        parts.append(vad.feed(audio[i : i + n]))
        i += n
    assert np.allclose(np.concatenate(parts), at_once, atol=1e-5)
    assert at_once.max() > 0.8  # there is speech in there


def test_silence_speech_silence_is_one_utterance_near_the_speech() -> None:
    speech, first, last = clip("test_pt.wav")  # no pause inside longer than 0.16 s
    lead = 1.5
    events = over_the_phone(np.concatenate([quiet(lead), speech, quiet(2.0, seed=1)]))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    onset, offset = lead + first, lead + last
    assert abs(started.start - onset) < 0.3
    assert started.start <= started.at <= onset + 0.6  # fired soon after the onset
    assert ended.start == started.start
    assert abs(ended.end - offset) < 0.4
    assert not ended.truncated
    # the audio holds the speech plus margins, and is the stream's own samples
    assert ended.audio_start < ended.start
    assert ended.audio_start + len(ended.audio) / SAMPLE_RATE > ended.end
    assert ended.audio_start <= onset - 0.1
    assert abs(len(ended.audio) / SAMPLE_RATE - (last - first)) < 1.0


@pytest.mark.parametrize("kind", ["speech_cut", "noise_burst", "click"])
def test_a_150_ms_burst_does_not_start_an_utterance(kind: str) -> None:
    n = int(0.15 * SAMPLE_RATE)
    if kind == "speech_cut":  # 150 ms out of the loudest part of a word
        speech, _, _ = clip("test.wav")
        energy = np.convolve(speech**2, np.ones(n), mode="valid")
        at = int(np.argmax(energy))
        burst = speech[at : at + n].copy()
    elif kind == "noise_burst":
        burst = (np.random.default_rng(2).standard_normal(n) * 0.3).astype(np.float32)
    else:  # a handset knock: a decaying impulse
        burst = (0.9 * np.exp(-np.arange(n) / 200.0)).astype(np.float32)
    ramp = np.linspace(0, 1, 80, dtype=np.float32)  # 5 ms fades, no extra click
    burst[:80] *= ramp
    burst[-80:] *= ramp[::-1]
    events = over_the_phone(np.concatenate([quiet(1.0), burst, quiet(1.5, seed=3)]))
    assert events == []


def test_two_sentences_apart_give_two_utterances() -> None:
    fr, fr_first, fr_last = clip("test_fr.wav")
    de, de_first, de_last = clip("test_de.wav")
    gap = 1.5  # plus the clips' own trailing/leading quiet: well over min_silence (0.6 s)
    audio = np.concatenate([quiet(1.0), fr, quiet(gap, seed=4), de, quiet(1.5, seed=5)])
    events = over_the_phone(audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    de_at = 1.0 + len(fr) / SAMPLE_RATE + gap
    assert abs(ends[0].start - (1.0 + fr_first)) < 0.3
    assert abs(ends[0].end - (1.0 + fr_last)) < 0.4
    assert abs(ends[1].start - (de_at + de_first)) < 0.4  # a soft onset
    assert abs(ends[1].end - (de_at + de_last)) < 0.4
    assert ends[0].end < ends[1].start


def test_an_utterance_is_cut_at_the_maximum_length() -> None:
    speech, _, _ = clip("test.wav")  # about 5 s of continuous speech
    segmenter = UtteranceSegmenter(max_utterance_s=2.0)
    events: list[Event] = []
    audio = np.concatenate([quiet(0.5), speech, quiet(1.5)])
    for i in range(0, len(audio), 320):
        events += segmenter.feed(audio[i : i + 320])
    events += segmenter.flush()
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ends) >= 2
    assert ends[0].truncated
    assert ends[0].duration <= 2.0 + 0.05
    assert not segmenter.speaking
