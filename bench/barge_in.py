"""The barge-in rule on the phone: false cut-offs against missed or late barge-ins.

    python -m bench.barge_in [--min-speech 150,250,350] [--seed 7]

While the bot speaks, :class:`voice.vad.UtteranceSegmenter` fires ``SpeechStarted``
once it has heard ``min_speech_ms`` of voiced audio, and the channel then stops
playback (Twilio ``clear``). Too eager and a cough cuts the bot off; too slow and a
caller who talks over the bot waits for it to stop.

Material, built from Picovoice Leopard's test clips (``../shared/data/speech``, 8
languages, 16 kHz, word timings in ``test_data.json``); every trial goes through the
phone path: 8 kHz μ-law, 160-byte (20 ms) frames decoded one by one, line noise at
about -66 dBFS around it.

* Should NOT fire (false cut-offs): cuts of real speech of 100/150/200 ms (an "mm", a
  syllable, a breath-in with voice) at random places inside words; cough-like noise
  bursts (white noise, fast attack, decaying, 150–300 ms); knocks (decaying impulses);
  breaths (low-passed noise, 400 ms, quiet).
* Should fire (barge-ins): the speech of a clip from one of its words to the end (at
  least 1 s of speech left), after 1 s of quiet; the onset is that word's start. Late =
  fired more than 500 ms after the onset. A 300 ms cut of speech (a short "sí"/"no")
  is reported on its own row: firing on it is right, but the rule may not.

Prints a Markdown table and the VAD's real-time factor (CPU seconds per audio second,
``time.process_time``; onnxruntime with one intra-op thread). Not a test.
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voice.telephony import frame_ulaw, pcm_to_ulaw8k, ulaw8k_to_pcm16k
from voice.vad import SAMPLE_RATE, SpeechStarted, StreamingVAD, UtteranceSegmenter

PROJECT = Path(__file__).resolve().parent.parent
LEOPARD = PROJECT.parent / "shared" / "data" / "speech" / "picovoice-leopard" / "resources"
LEAD_S = 1.0  # quiet before each trial
TAIL_S = 1.0  # quiet after a short burst
LATE_MS = 500.0

Samples = npt.NDArray[np.float32]


@dataclass
class Clip:
    name: str
    audio: Samples
    words: list[tuple[float, float]]  # (start, end) seconds


@dataclass
class Trial:
    kind: str
    chunks: list[Samples]  # 16 kHz PCM as decoded from 20 ms μ-law frames
    onset: float | None = None  # seconds, for trials that should fire
    seconds: float = 0.0


def load_clips() -> list[Clip]:
    meta = json.loads((LEOPARD / ".test" / "test_data.json").read_text())
    clips = []
    for test in meta["tests"]["language_tests"]:
        with wave.open(str(LEOPARD / "audio_samples" / test["audio_file"])) as w:
            assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        words = [(float(x["start_sec"]), float(x["end_sec"])) for x in test["words"]]
        clips.append(Clip(test["audio_file"], pcm.astype(np.float32) / 32768.0, words))
    return clips


def quiet(seconds: float, rng: np.random.Generator) -> Samples:
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.0005).astype(np.float32)


def fade(x: Samples, ms: float = 5.0) -> Samples:
    n = min(int(ms * SAMPLE_RATE / 1000), len(x) // 2)
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    out = x.copy()
    out[:n] *= ramp
    out[len(out) - n :] *= ramp[::-1]
    return out


def over_the_phone(pcm: Samples) -> list[Samples]:
    """What the channel will hand the segmenter: decoded 20 ms μ-law frames."""
    state = None
    chunks = []
    for frame in frame_ulaw(pcm_to_ulaw8k(pcm, SAMPLE_RATE)):
        chunk, state = ulaw8k_to_pcm16k(frame, state)
        chunks.append(chunk)
    return chunks


def burst_trial(kind: str, burst: Samples, rng: np.random.Generator) -> Trial:
    pcm = np.concatenate([quiet(LEAD_S, rng), fade(burst), quiet(TAIL_S, rng)])
    return Trial(kind, over_the_phone(pcm), seconds=len(pcm) / SAMPLE_RATE)


def speech_cut(clips: list[Clip], ms: int, rng: np.random.Generator) -> Samples:
    """``ms`` of speech from inside a random word long enough to hold it."""
    n = int(ms * SAMPLE_RATE / 1000)
    while True:
        clip = clips[int(rng.integers(len(clips)))]
        start, end = clip.words[int(rng.integers(len(clip.words)))]
        a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE) - n
        if b > a:
            at = int(rng.integers(a, b))
            return clip.audio[at : at + n].copy()
        if end - start >= 0.08:  # a short word: take it whole with its neighbourhood
            at = max(0, int((start + end) / 2 * SAMPLE_RATE) - n // 2)
            return clip.audio[at : at + n].copy()


def cough(ms: int, rng: np.random.Generator) -> Samples:
    n = int(ms * SAMPLE_RATE / 1000)
    env = np.minimum(np.arange(n) / 80.0, 1.0) * np.exp(-np.arange(n) / (n / 3))
    level = 10 ** (rng.uniform(-20, -6) / 20)
    return (rng.standard_normal(n) * env * level).astype(np.float32)


def knock(rng: np.random.Generator) -> Samples:
    n = int(0.15 * SAMPLE_RATE)
    tone = np.sin(2 * np.pi * rng.uniform(80, 400) * np.arange(n) / SAMPLE_RATE)
    return (0.9 * np.exp(-np.arange(n) / rng.uniform(100, 600)) * tone).astype(np.float32)


def breath(rng: np.random.Generator) -> Samples:
    n = int(0.4 * SAMPLE_RATE)
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")  # dull hiss
    env = np.sin(np.pi * np.arange(n) / n) ** 2
    return (noise * env * 10 ** (rng.uniform(-36, -26) / 20) * 3).astype(np.float32)


def build(clips: list[Clip], seed: int, per_kind: int) -> list[Trial]:
    rng = np.random.default_rng(seed)
    trials: list[Trial] = []
    makers: dict[str, Callable[[], Samples]] = {
        "speech cut 100 ms": lambda: speech_cut(clips, 100, rng),
        "speech cut 150 ms": lambda: speech_cut(clips, 150, rng),
        "speech cut 200 ms": lambda: speech_cut(clips, 200, rng),
        "cough-like burst 150-300 ms": lambda: cough(int(rng.integers(150, 301)), rng),
        "knock 150 ms": lambda: knock(rng),
        "breath 400 ms": lambda: breath(rng),
        "short word 300 ms (should fire)": lambda: speech_cut(clips, 300, rng),
    }
    for kind, make in makers.items():
        trials += [burst_trial(kind, make(), rng) for _ in range(per_kind)]
    for clip in clips:
        last_end = clip.words[-1][1]
        for k, (start, _) in enumerate(clip.words):
            if last_end - start < 1.0:
                break
            cut_from = max(clip.words[k - 1][1] if k else 0.0, start - 0.05)
            speech = clip.audio[int(cut_from * SAMPLE_RATE) : int((start + 2.0) * SAMPLE_RATE)]
            pcm = np.concatenate([quiet(LEAD_S, rng), fade(speech), quiet(0.3, rng)])
            onset = LEAD_S + (start - cut_from)
            trials.append(
                Trial("barge-in", over_the_phone(pcm), onset, seconds=len(pcm) / SAMPLE_RATE)
            )
    return trials


def first_start(trial: Trial, min_speech_ms: int, vad: StreamingVAD) -> SpeechStarted | None:
    segmenter = UtteranceSegmenter(min_speech_ms=min_speech_ms, vad=vad)
    for chunk in trial.chunks:
        for event in segmenter.feed(chunk):
            if isinstance(event, SpeechStarted):
                return event
    return None


def real_time_factor(trials: list[Trial], vad: StreamingVAD) -> tuple[float, float]:
    """CPU seconds per audio second: the VAD alone, and decode + segmenter together."""
    audio = sum(t.seconds for t in trials)
    t0 = time.process_time()
    for trial in trials:
        vad.reset()
        for chunk in trial.chunks:
            vad.feed(chunk)
    vad_only = (time.process_time() - t0) / audio
    streams = [frame_ulaw(pcm_to_ulaw8k(np.concatenate(t.chunks), SAMPLE_RATE)) for t in trials]
    t0 = time.process_time()
    for frames in streams:
        segmenter = UtteranceSegmenter(vad=vad)
        state = None
        for frame in frames:
            chunk, state = ulaw8k_to_pcm16k(frame, state)
            segmenter.feed(chunk)
    full = (time.process_time() - t0) / audio
    return vad_only, full


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-speech", default="150,250,350", help="ms values, comma-separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--per-kind", type=int, default=24, help="trials per noise kind")
    args = parser.parse_args()
    values = [int(v) for v in args.min_speech.split(",")]

    clips = load_clips()
    trials = build(clips, args.seed, args.per_kind)
    vad = StreamingVAD()

    kinds = list(dict.fromkeys(t.kind for t in trials))
    fired: dict[tuple[str, int], int] = {}
    latencies: dict[int, list[float]] = {v: [] for v in values}
    missed: dict[int, int] = dict.fromkeys(values, 0)
    for value in values:
        for trial in trials:
            started = first_start(trial, value, vad)
            fired[trial.kind, value] = fired.get((trial.kind, value), 0) + (started is not None)
            if trial.onset is not None:
                if started is None:
                    missed[value] += 1
                else:
                    latencies[value].append((started.at - trial.onset) * 1000)

    count = {k: sum(t.kind == k for t in trials) for k in kinds}
    head = " | ".join(f"min_speech_ms={v}" for v in values)
    print(f"| trials | n | {head} |")
    print("|---|---:|" + "---:|" * len(values))
    noise = [k for k in kinds if k not in ("barge-in", "short word 300 ms (should fire)")]
    for kind in noise:
        cells = " | ".join(f"{fired[kind, v]} fired" for v in values)
        print(f"| {kind} | {count[kind]} | {cells} |")
    false_total = {v: sum(fired[k, v] for k in noise) for v in values}
    n_noise = sum(count[k] for k in noise)
    cells = " | ".join(f"**{false_total[v]}** ({false_total[v] / n_noise:.0%})" for v in values)
    print(f"| **false cut-offs, all** | {n_noise} | {cells} |")
    kind = "short word 300 ms (should fire)"
    cells = " | ".join(f"{fired[kind, v]} fired" for v in values)
    print(f"| {kind} | {count[kind]} | {cells} |")
    n_real = count["barge-in"]
    print(f"| barge-ins missed | {n_real} | " + " | ".join(str(missed[v]) for v in values) + " |")
    for label, q in (("p50", 0.5), ("p90", 0.9), ("max", 1.0)):
        cells = " | ".join(f"{pct(latencies[v], q):.0f} ms" for v in values)
        print(f"| barge-in delay after onset, {label} | {n_real} | {cells} |")
    cells = " | ".join(str(sum(x > LATE_MS for x in latencies[v]) + missed[v]) for v in values)
    print(f"| late (> {LATE_MS:.0f} ms) or missed | {n_real} | {cells} |")

    vad_only, full = real_time_factor(trials, vad)
    audio = sum(t.seconds for t in trials)
    print()
    print(
        f"Real-time factor over {audio:.0f} s of audio (CPU s per audio s, 1 intra-op thread): "
        f"VAD {vad_only:.4f}; μ-law decode + VAD + segmenter {full:.4f} "
        f"(= {1 / full:.0f} calls per CPU core)."
    )
    print(
        "Delay = when SpeechStarted fires minus the word's start in Leopard's timings "
        "(±50 ms); it cannot be shorter than min_speech_ms rounded up to 32 ms windows."
    )


if __name__ == "__main__":
    main()
