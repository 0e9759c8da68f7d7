"""Offline speech-to-text with faster-whisper (CTranslate2, int8 on the CPU).

The model is a folder given in settings or, by default, the multilingual Whisper base
model assembled from its PyPI packages (:mod:`voice.models`). It loads in ``start()``
in a thread; every transcription runs on one worker thread, one at a time (CTranslate2
already uses all ``cpu_threads`` for one request, so queueing is cheaper than sharing).

Language identification is restricted to the bot's languages: Whisper scores all its
languages on the first 30 s, and the most probable of ``languages`` wins; that language
is then forced for decoding; ``language_confidence`` is its probability renormalised
over ``languages``. With a single language there is nothing to identify (1.0); codes
Whisper does not know are ignored, and with none left any language may be chosen.
The encoder output of that window is reused by the decoder (see :class:`_Model`), so
identification costs no second encoder pass.

Confidence (0..1) is the token-weighted mean over segments of
``exp(avg_logprob) × (1 − no_speech_prob)``: the geometric-mean probability of the
decoded tokens, discounted by Whisper's own belief that the window holds no speech.
No text (silence, noise, nothing left after the VAD) gives ``""`` with confidence 0.

``vad_filter`` (on by default) cuts the non-speech parts with faster-whisper's Silero
VAD before anything else: it costs a few milliseconds, leaves the WER of speech alike
(bench.voice) and turns background noise into ``""`` instead of a hallucinated
"Thank you for watching." that took 2.4 s of temperature fallbacks to produce.

Short encoding (``short_encode``, on by default): Whisper's encoder always takes a 30-s
window (3,000 mel frames, zero-padded), so a 3 s note costs as much as 30 s of audio.
For clips up to ``SHORT_MAX_S`` the encoder gets only the utterance's frames plus
``encode_margin_s``, rounded up to whole seconds (as whisper.cpp's ``audio_ctx``): the
encoder output is proportionally shorter, and language identification and the decoder
attend to it unchanged (CTranslate2 accepts any length up to 3,000 frames). The model
was trained on full windows and, with a margin of 1 s or less, sometimes says the
sentence twice (bench.voice); so that decode gets one try at temperature 0, its tokens
are capped by the duration (``TOKENS_PER_S``), and when the transcript looks degenerate
(:func:`degenerate`: empty, a repetition loop, the token cap reached, more text than the
audio can hold, faster-whisper's compression ratio or log-probability thresholds) the
clip is transcribed again on the full window, exactly as without short encoding.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.settings import Settings
from voice.audio import AudioError, decode_to_pcm16k
from voice.models import ModelError, whisper_base
from voice.stt.base import SpeechError, SpeechToText, Transcript

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = ".habla/models/whisper-base"
SILENCE_PEAK = 10 ** (-60 / 20)  # −60 dBFS: a voice note this quiet holds no speech
WINDOW_FRAMES = 3000  # Whisper's 30-s input window, in mel frames
MIN_SAMPLES = 1_600  # 0.1 s: shorter holds no word (and leaves no frame to identify)
SAMPLE_RATE = 16_000
FRAMES_PER_S = 100  # mel frames per second
SHORT_MAX_S = 25.0  # longer clips are encoded on the full window
TOKENS_PER_S = 12.0  # cap on decoded tokens per second of audio (short encoding)
TOKENS_EXTRA = 16  # ... plus this many, for very short clips
MAX_CHARS_PER_S = 25.0  # more text than this per second of audio is not speech
COMPRESSION_RATIO = 2.4  # faster-whisper's compression_ratio_threshold
LOG_PROB = -1.0  # faster-whisper's log_prob_threshold
_NOT_WORD = re.compile(r"[^\w\s]+")
_SHORT_LOOP = re.compile(r"(.{1,7}?)\1{4,}")  # a short unit 5 times in a row
_LONG_LOOP = re.compile(r"(.{8,80}?)\1{2,}")  # a phrase 3 times in a row
_WORDS_TWICE = re.compile(r"(?:^|\s)((?:\S+\s){4,}?)\1")  # 4+ words twice in a row
_RUN_TWICE = re.compile(r"(\S{10,}?)\1")  # 10+ characters without spaces, twice (CJK)


@dataclass(frozen=True)
class _Result:
    text: str
    language: str | None
    confidence: float
    language_confidence: float


def confidence(segments: Iterable[Any]) -> float:
    """Token-weighted mean of ``exp(avg_logprob) × (1 − no_speech_prob)``; 0 if empty."""
    total = weight = 0.0
    for seg in segments:
        n = max(len(seg.tokens), 1)
        total += n * math.exp(seg.avg_logprob) * (1.0 - seg.no_speech_prob)
        weight += n
    return min(max(total / weight, 0.0), 1.0) if weight else 0.0


def _compression_ratio(text: str) -> float:
    from faster_whisper.transcribe import get_compression_ratio

    return float(get_compression_ratio(text))


def degenerate(
    text: str,
    seconds: float,
    *,
    tokens: int = 0,
    max_tokens: int = 0,
    avg_logprob: float = 0.0,
) -> str | None:
    """Why a transcript of ``seconds`` of speech looks like a decoder failure, or None.

    Checks: no text; the decoded tokens reached ``max_tokens``; a repetition loop (after
    lowercasing and dropping punctuation: a unit of 1–7 characters 5 times in a row, a
    phrase of 8+ characters 3 times, 4+ words or 10+ unspaced characters twice); more
    than ``MAX_CHARS_PER_S`` characters per second (+20); gzip compression ratio above
    2.4 or mean log-probability below −1 (faster-whisper's own thresholds for retrying a
    window at a higher temperature).
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if max_tokens and tokens >= max_tokens:
        return f"reached the token cap ({max_tokens})"
    flat = " ".join(_NOT_WORD.sub(" ", stripped.lower()).split()) + " "
    loops = (_SHORT_LOOP, _LONG_LOOP, _WORDS_TWICE, _RUN_TWICE)
    if any(loop.search(flat) for loop in loops):
        return "repetition loop"
    if len(stripped) > MAX_CHARS_PER_S * seconds + 20:
        return f"{len(stripped)} characters for {seconds:.1f} s"
    ratio = _compression_ratio(stripped)
    if ratio > COMPRESSION_RATIO:
        return f"compression ratio {ratio:.2f}"
    if avg_logprob < LOG_PROB:
        return f"mean log-probability {avg_logprob:.2f}"
    return None


def _cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _primary(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0].strip().lower()


def _model_class() -> type[Any]:
    from faster_whisper import WhisperModel

    class _Model(WhisperModel):
        """Remembers the last encoded window: identifying the language and decoding
        the first window encode the same mel features, so the second is a cache hit.
        With ``frames`` set, only the first ``frames`` mel frames of a window are
        encoded (the rest is faster-whisper's zero padding up to 30 s)."""

        _last: tuple[np.ndarray, Any] | None = None
        frames: int | None = None

        def encode(self, features: np.ndarray) -> Any:
            if self.frames is not None and features.shape[-1] > self.frames:
                features = features[..., : self.frames]
            last = self._last
            if last is not None and last[0].shape == features.shape:
                if np.array_equal(last[0], features):
                    return last[1]
            output = super().encode(features)
            self._last = (np.array(features, copy=True), output)
            return output

        def forget(self) -> None:
            self._last = None
            self.frames = None

    return _Model


class WhisperSTT(SpeechToText):
    name = "whisper"

    @classmethod
    def from_settings(cls, settings: Settings) -> WhisperSTT:
        v = settings.voice
        return cls(
            model_dir=str(settings.path(v.whisper_model_dir)) if v.whisper_model_dir else "",
            cache_dir=str(settings.models_dir / "whisper-base"),
            beam_size=v.whisper_beam_size,
            cpu_threads=v.whisper_threads,
            short_encode=v.whisper_short_encode,
            encode_margin_s=v.whisper_encode_margin_s,
        )

    def __init__(
        self,
        model_dir: str = "",
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
        *,
        beam_size: int = 5,
        cpu_threads: int = 0,
        vad_filter: bool = True,
        compute_type: str = "int8",
        short_encode: bool = True,
        encode_margin_s: float = 3.0,
    ) -> None:
        self.model_dir = model_dir
        self.cache_dir = Path(cache_dir)
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads or min(_cpus(), 4)
        self.vad_filter = vad_filter
        self.compute_type = compute_type
        self.short_encode = short_encode
        self.encode_margin_s = max(encode_margin_s, 0.0)
        self.short_encodes = 0  # clips transcribed from the utterance's frames alone
        self.fallbacks = 0  # ... of which redone on the full window (degenerate)
        self._model: Any = None
        self._languages: frozenset[str] = frozenset()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        try:
            path = Path(self.model_dir) if self.model_dir else whisper_base(self.cache_dir)
        except ModelError as e:
            raise SpeechError(str(e)) from e
        if not (path / "model.bin").is_file():
            raise SpeechError(f"no Whisper model (model.bin) in {path}")
        try:
            model = _model_class()(
                str(path),
                device="cpu",
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
            )
        except (RuntimeError, OSError, ValueError) as e:
            raise SpeechError(f"could not load the Whisper model in {path}: {e}") from e
        self._languages = frozenset(model.supported_languages)
        self._model = model
        logger.info(
            "whisper: loaded %s (%s, %d threads)", path, self.compute_type, self.cpu_threads
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=True)

    def _unload(self) -> None:
        self._model = None

    # ------------------------------------------------------------------ transcription

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        if self._model is None:
            await self.start()
        try:
            samples, duration = await asyncio.to_thread(decode_to_pcm16k, audio, content_type)
        except AudioError as e:
            raise SpeechError(str(e)) from e
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._executor, self._transcribe, samples, list(languages)
        )
        return Transcript(
            text=result.text,
            language=result.language,
            confidence=result.confidence,
            duration_s=duration,
            engine=self.name,
            language_confidence=result.language_confidence,
        )

    def _transcribe(self, samples: np.ndarray, languages: list[str]) -> _Result:
        model = self._model
        if model is None:
            raise SpeechError("whisper is closed")
        allowed = [c for c in dict.fromkeys(_primary(x) for x in languages) if c in self._languages]
        silent = _Result("", allowed[0] if len(allowed) == 1 else None, 0.0, 0.0)
        if len(samples) < MIN_SAMPLES or float(np.abs(samples).max()) < SILENCE_PEAK:
            return silent
        if self.vad_filter:
            samples = self._speech_only(samples)
            if len(samples) < MIN_SAMPLES:
                return silent
        frames = self.short_frames(len(samples))
        if frames is not None:
            self.short_encodes += 1
            seconds = len(samples) / SAMPLE_RATE
            max_tokens = min(math.ceil(TOKENS_PER_S * seconds) + TOKENS_EXTRA, 440)
            result, segments = self._decode(samples, allowed, frames, max_tokens)
            tokens = sum(len(s.tokens) for s in segments)
            weight = max(tokens, 1)
            avg_logprob = sum(len(s.tokens) * s.avg_logprob for s in segments) / weight
            reason = degenerate(
                result.text,
                seconds,
                tokens=tokens,
                max_tokens=max_tokens,
                avg_logprob=avg_logprob if segments else 0.0,
            )
            if reason is None:
                return result
            self.fallbacks += 1
            logger.info(
                "whisper: %s from %d frames looks degenerate (%s): full window",
                f"{result.text[:80]!r}",
                frames,
                reason,
            )
        return self._decode(samples, allowed, None, None)[0]

    def short_frames(self, n_samples: int) -> int | None:
        """Mel frames to encode for a clip of ``n_samples`` (utterance + margin, rounded
        up to whole seconds), or None for the full 30-s window."""
        seconds = n_samples / SAMPLE_RATE
        if not self.short_encode or seconds > SHORT_MAX_S:
            return None
        frames = math.ceil(seconds + self.encode_margin_s) * FRAMES_PER_S
        return frames if frames < WINDOW_FRAMES else None

    def _decode(
        self,
        samples: np.ndarray,
        allowed: list[str],
        frames: int | None,
        max_tokens: int | None,
    ) -> tuple[_Result, list[Any]]:
        """Identify the language and decode, encoding ``frames`` mel frames (None: the
        full window, with faster-whisper's temperature fallbacks)."""
        model = self._model
        try:
            model.forget()
            model.frames = frames
            if len(allowed) == 1:
                language, language_confidence = allowed[0], 1.0
            else:
                language, language_confidence = self._identify(samples, allowed)
            options: dict[str, Any] = {}
            if frames is not None:  # one try at temperature 0; the full window is the retry
                options = {"temperature": 0.0, "max_new_tokens": max_tokens}
            segments, _ = model.transcribe(
                samples,
                language=language,
                beam_size=self.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                **options,
            )
            segments = list(segments)  # decoding happens while iterating
        except RuntimeError as e:  # CTranslate2
            raise SpeechError(f"whisper failed: {e}") from e
        finally:
            model.forget()
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        conf = confidence(segments) if text else 0.0
        return _Result(text, language, conf, language_confidence), segments

    def _identify(self, samples: np.ndarray, allowed: list[str]) -> tuple[str, float]:
        """The most probable of ``allowed`` (any language when empty) on the first window,
        and its probability among them."""
        model = self._model
        features = model.feature_extractor(samples)
        # the exact window generate_segments() encodes first (it drops the last frame)
        window = features[:, : min(WINDOW_FRAMES, features.shape[-1] - 1)]
        _, _, probabilities = model.detect_language(features=window)
        scores: dict[str, float] = dict(probabilities)
        candidates = allowed or list(scores)
        best = max(candidates, key=lambda code: scores.get(code, 0.0))
        total = sum(scores.get(code, 0.0) for code in candidates)
        return best, scores.get(best, 0.0) / total if total > 0 else 0.0

    def _speech_only(self, samples: np.ndarray) -> np.ndarray:
        from faster_whisper.vad import collect_chunks, get_speech_timestamps

        chunks = get_speech_timestamps(samples)
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(collect_chunks(samples, chunks)[0])
