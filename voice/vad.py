"""Streaming voice activity detection for phone calls: Silero VAD v6 (ONNX).

The model is the one that ships inside faster-whisper
(``faster_whisper/assets/silero_vad_v6.onnx``), run with onnxruntime the way
``faster_whisper.vad.SileroVADModel`` runs it: 16 kHz float32 audio in windows of 512
samples (32 ms), each prefixed with the last 64 samples of the window before (zeros
before the first), and an LSTM state (``h``, ``c``: 1×1×128 each) carried from window
to window. Here the state and the 64-sample context are kept between calls, so audio
can arrive in any chunk size (a Twilio frame is 320 samples once at 16 kHz).

* :class:`StreamingVAD`: PCM in, one speech probability per 32 ms window out.
* :class:`UtteranceSegmenter`: probabilities → :class:`SpeechStarted` (after
  ``min_speech_ms`` of voiced audio: also the barge-in rule) and :class:`SpeechEnded`
  (after ``min_silence_ms`` of silence, with the utterance's PCM and a pre-roll).

Threading: inference is CPU work (~0.1 ms per window), so callers run ``feed`` in a
worker thread (``asyncio.to_thread`` or an executor), never on the event loop. Nothing
here uses asyncio. The ONNX session is created once per process, lazily, with one
intra-op thread, and shared: ``InferenceSession.run`` is thread-safe, and the
per-stream state lives in each :class:`StreamingVAD`. One object per call; an object
itself must not be fed from two threads at once.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
WINDOW = 512  # samples per model call: 32 ms
CONTEXT = 64  # samples of the previous window prefixed to each window
WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE

Samples = npt.NDArray[np.float32]

_lock = threading.Lock()


def model_path() -> Path:
    """Where faster-whisper keeps Silero VAD v6."""
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


@functools.lru_cache(maxsize=1)
def _session_cached() -> Any:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(
        str(model_path()), providers=["CPUExecutionProvider"], sess_options=opts
    )


def shared_session() -> Any:
    """The process-wide onnxruntime session (created on first use, then reused)."""
    with _lock:  # lru_cache alone could build two sessions under a race
        return _session_cached()


def _as_float(pcm: npt.NDArray[Any]) -> Samples:
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError("expected mono audio (a 1-D array)")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    return arr.astype(np.float32, copy=False)


class StreamingVAD:
    """Speech probabilities for a 16 kHz PCM stream fed in chunks of any size.

    ``feed`` returns one probability per 32 ms window completed by the chunk (possibly
    none); samples short of a window wait for the next chunk. Window ``i`` covers
    samples ``[i * 512, (i + 1) * 512)`` of the stream. Synchronous and CPU-bound: call
    it from a worker thread.
    """

    def __init__(self, session: Any = None) -> None:
        self._session = session if session is not None else shared_session()
        self.reset()

    def reset(self) -> None:
        """Forget the stream: state, context and buffered samples."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.windows = 0  # windows evaluated so far

    def feed(self, pcm: npt.NDArray[Any]) -> Samples:
        """Probabilities (float32, 0..1) for the windows this chunk completes."""
        audio = np.concatenate([self._pending, _as_float(pcm)])
        n = len(audio) // WINDOW
        self._pending = audio[n * WINDOW :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        contexts = np.empty((n, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = windows[:-1, -CONTEXT:]
        self._context = windows[-1, -CONTEXT:].copy()
        batch = np.concatenate([contexts, windows], axis=1)
        # the model reads the batch axis as time: n windows in one call, state in/out
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self.windows += n
        return np.asarray(probs, dtype=np.float32).reshape(n)


@dataclass(frozen=True)
class SpeechStarted:
    """Enough voiced audio to call it speech (the barge-in moment).

    ``start``: seconds into the stream where the voiced run began (the onset);
    ``at``: seconds into the stream when the event fired (end of the deciding window).
    """

    start: float
    at: float


@dataclass(frozen=True)
class SpeechEnded:
    """An utterance is over: its PCM (16 kHz float32, with pre-roll and a short tail).

    ``start``/``end``: seconds into the stream of the speech itself (no margins);
    ``audio_start``: where ``audio`` begins; ``truncated``: cut at the maximum length
    (the speaker may still be talking; a new utterance starts if so).
    """

    start: float
    end: float
    audio_start: float
    audio: Samples = field(repr=False)
    truncated: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


Event = SpeechStarted | SpeechEnded


class UtteranceSegmenter:
    """Turns a 16 kHz PCM stream into utterances, with a barge-in rule.

    Windows with probability ≥ ``threshold`` are voiced; below ``neg_threshold``
    (default ``threshold - 0.15``) silent; in between they continue whatever run they
    are in (hysteresis, as in Silero's own segmentation).

    * :class:`SpeechStarted` after ``min_speech_ms`` of uninterrupted voiced audio, so a
      click, a cough or an "mm" shorter than that never starts an utterance (nor cuts
      the bot off).
    * :class:`SpeechEnded` after ``min_silence_ms`` of silence, or when the utterance
      reaches ``max_utterance_s``. Its audio runs from ``pre_roll_ms`` before the onset
      to ``post_roll_ms`` after the last voiced window.

    ``feed`` accepts chunks of any size and returns the events they caused; ``flush``
    ends the stream (closing an utterance in progress). Synchronous and CPU-bound: run
    it in a worker thread.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_ms: float = 250,
        min_silence_ms: float = 600,
        pre_roll_ms: float = 300,
        post_roll_ms: float = 200,
        max_utterance_s: float = 30.0,
        vad: StreamingVAD | None = None,
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = (
            neg_threshold if neg_threshold is not None else max(threshold - 0.15, 0.01)
        )
        self.min_speech_windows = max(1, int(np.ceil(min_speech_ms / WINDOW_MS)))
        self.min_silence_windows = max(1, int(np.ceil(min_silence_ms / WINDOW_MS)))
        self.pre_roll = int(pre_roll_ms * SAMPLE_RATE / 1000)
        self.post_roll = int(post_roll_ms * SAMPLE_RATE / 1000)
        self.max_samples = int(max_utterance_s * SAMPLE_RATE)
        self.vad = vad if vad is not None else StreamingVAD()
        self.reset()

    def reset(self) -> None:
        """Forget the stream (and the VAD's state)."""
        self.vad.reset()
        self._chunks: list[Samples] = []
        self._audio_start = 0  # stream sample index of self._audio[0]
        self._window = 0  # index of the next window to judge
        self._run_start: int | None = None  # first window of the current voiced run
        self._run_len = 0
        self._speaking = False
        self._onset = 0  # stream sample of the utterance's onset
        self._last_voiced_end = 0  # stream sample after the last voiced window
        self._silent = 0  # silent windows since the last voiced one

    @property
    def speaking(self) -> bool:
        """Inside an utterance (after SpeechStarted, before SpeechEnded)."""
        return self._speaking

    def feed(self, pcm: npt.NDArray[Any]) -> list[Event]:
        """Feed 16 kHz PCM (float32 in [-1, 1] or int16); the events it caused."""
        samples = _as_float(pcm)
        self._chunks.append(samples)
        events: list[Event] = []
        for p in self.vad.feed(samples):
            events.extend(self._judge(float(p)))
        if not self._speaking:
            self._trim()
        return events

    def flush(self) -> list[Event]:
        """End of stream: close an utterance in progress (a voiced run never started)."""
        events: list[Event] = []
        if self._speaking:
            end = self._audio_start + len(self._buffer())
            events.append(self._end(min(self._last_voiced_end, end), end, truncated=False))
        self.reset()
        return events

    def _judge(self, p: float) -> list[Event]:
        i = self._window
        self._window += 1
        lo, hi = i * WINDOW, (i + 1) * WINDOW
        if not self._speaking:
            if p >= self.threshold or (self._run_start is not None and p >= self.neg_threshold):
                if self._run_start is None:
                    self._run_start, self._run_len = i, 0
                self._run_len += 1
                if self._run_len >= self.min_speech_windows:
                    self._speaking = True
                    self._onset = self._run_start * WINDOW
                    self._last_voiced_end, self._silent = hi, 0
                    self._run_start, self._run_len = None, 0
                    return [SpeechStarted(self._onset / SAMPLE_RATE, hi / SAMPLE_RATE)]
            else:
                self._run_start, self._run_len = None, 0
            return []
        if p >= self.threshold or (p >= self.neg_threshold and self._silent == 0):
            self._last_voiced_end, self._silent = hi, 0
        else:
            self._silent += 1
        if self._silent >= self.min_silence_windows:
            return [self._end(self._last_voiced_end, lo, truncated=False)]
        if hi - self._onset >= self.max_samples:
            return [self._end(hi, hi, truncated=True)]
        return []

    def _end(self, speech_end: int, now: int, *, truncated: bool) -> SpeechEnded:
        """Close the utterance at stream sample ``speech_end``; keep audio after ``now``."""
        begin = max(self._onset - self.pre_roll, self._audio_start)
        stop = max(speech_end, min(speech_end + self.post_roll, now + WINDOW))
        audio = self._buffer()[begin - self._audio_start : stop - self._audio_start].copy()
        event = SpeechEnded(
            start=self._onset / SAMPLE_RATE,
            end=speech_end / SAMPLE_RATE,
            audio_start=begin / SAMPLE_RATE,
            audio=audio,
            truncated=truncated,
        )
        self._speaking = False
        self._silent = 0
        self._run_start, self._run_len = None, 0
        return event

    def _trim(self) -> None:
        """Outside an utterance, keep only what a future one could need: the pre-roll
        before the current voiced run (or before the unjudged samples)."""
        first_needed = (
            self._run_start * WINDOW if self._run_start is not None else self._window * WINDOW
        )
        keep_from = max(self._audio_start, first_needed - self.pre_roll)
        if keep_from > self._audio_start:
            self._chunks = [self._buffer()[keep_from - self._audio_start :]]
            self._audio_start = keep_from

    def _buffer(self) -> Samples:
        """The buffered audio as one array (chunks are joined only when needed)."""
        if len(self._chunks) != 1:
            self._chunks = [
                np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
            ]
        return self._chunks[0]
