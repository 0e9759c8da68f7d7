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
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
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


def _cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _primary(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0].strip().lower()


def _model_class() -> type[Any]:
    from faster_whisper import WhisperModel

    class _Model(WhisperModel):
        """Remembers the last encoded window: identifying the language and decoding
        the first window encode the same mel features, so the second is a cache hit."""

        _last: tuple[np.ndarray, Any] | None = None

        def encode(self, features: np.ndarray) -> Any:
            last = self._last
            if last is not None and last[0].shape == features.shape:
                if np.array_equal(last[0], features):
                    return last[1]
            output = super().encode(features)
            self._last = (np.array(features, copy=True), output)
            return output

        def forget(self) -> None:
            self._last = None

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
    ) -> None:
        self.model_dir = model_dir
        self.cache_dir = Path(cache_dir)
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads or min(_cpus(), 4)
        self.vad_filter = vad_filter
        self.compute_type = compute_type
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
        try:
            if len(allowed) == 1:
                language, language_confidence = allowed[0], 1.0
            else:
                language, language_confidence = self._identify(samples, allowed)
            segments, _ = model.transcribe(
                samples,
                language=language,
                beam_size=self.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            segments = list(segments)  # decoding happens while iterating
        except RuntimeError as e:  # CTranslate2
            raise SpeechError(f"whisper failed: {e}") from e
        finally:
            model.forget()
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return _Result(text, language, confidence(segments) if text else 0.0, language_confidence)

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
