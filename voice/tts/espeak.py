"""Offline text-to-speech with espeak-ng, through ctypes, encoded as an OGG/Opus note.

The shared library and its voice data come from the ``espeakng-loader`` wheel (no
system install). espeak-ng keeps all its state in the process (one current voice, one
callback, one rate), so one :class:`_Library` per process owns it, and every call to it
runs on that object's single thread: concurrent replies queue instead of mixing their
voices. Synthesis is synchronous (``AUDIO_OUTPUT_SYNCHRONOUS``): ``espeak_Synth``
returns when the text is spoken, having handed the 16-bit samples to our callback.
Encoding to OGG/Opus (:mod:`voice.audio`) then runs off that thread.

The default voice for a language is the voice named by its ISO 639-1 code (``es``:
Spanish (Spain), ``pt``: Portuguese (Portugal), ``en``: English (GB)...); a voice
argument names another (``pt-br``, ``es-419``, ``en-us``). A language without an
espeak voice of that name is looked up by language instead (``zh`` → ``cmn``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from runtime.settings import Settings
from voice.audio import AudioError, pcm_to_ogg_opus
from voice.stt.base import SpeechError
from voice.tts.base import Speech, TextToSpeech, parse_voices

logger = logging.getLogger(__name__)

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE = 1
EE_OK = 0

DEFAULT_RATE = 160  # words per minute (espeak's own: 175; 120–175 heard back alike)
MAX_CHARS = 4000

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Library:
    """The process's espeak-ng: loaded and initialised once, used from one thread."""

    _instance: _Library | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Library:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._lib: Any = None
        self._chunks: list[bytes] = []
        self._callback = _Callback(self._collect)  # kept alive as long as the library
        self.sample_rate = 0

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0: go on

    def open(self) -> Any:
        if self._lib is None:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [_Callback]
            lib.espeak_SetSynthCallback.restype = None
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.POINTER(ctypes.c_uint),
                ctypes.c_void_p,
            ]
            data = espeakng_loader.get_data_path().encode()
            rate = lib.espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS, 0, data, ESPEAK_INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise SpeechError(f"espeak-ng did not initialise (data: {data.decode()})")
            lib.espeak_SetSynthCallback(self._callback)
            self.sample_rate = int(rate)
            self._lib = lib
        return self._lib

    def _select(self, lib: Any, voice: str, language: str) -> None:
        if lib.espeak_SetVoiceByName(voice.encode()) == EE_OK:
            return
        if voice == language:  # no voice named like the language: ask by language
            spec = _Voice(languages=language.encode())
            if lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) == EE_OK:
                return
        raise SpeechError(f"espeak-ng has no voice {voice!r} for language {language!r}")

    def synthesize(self, text: str, language: str, voice: str, rate: int) -> np.ndarray:
        """int16 samples at :attr:`sample_rate`. Call on :attr:`executor` only."""
        lib = self.open()
        self._select(lib, voice, language)
        lib.espeak_SetParameter(PARAM_RATE, rate, 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        try:
            status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if status != EE_OK:
                raise SpeechError(f"espeak-ng failed (error {status})")
            return np.frombuffer(b"".join(self._chunks), dtype="<i2")
        finally:
            self._chunks = []


class EspeakTTS(TextToSpeech):
    name = "espeak"

    @classmethod
    def from_settings(cls, settings: Settings) -> EspeakTTS:
        return cls(voices=parse_voices(settings))

    def __init__(
        self, *, voices: Mapping[str, str] | None = None, rate: int = DEFAULT_RATE
    ) -> None:
        self.voices = {k.lower(): v for k, v in (voices or {}).items()}
        self.rate = rate

    def voice_for(self, language: str, voice: str = "") -> str:
        return voice or self.voices.get(language) or language

    async def start(self) -> None:
        lib = _Library.get()
        await asyncio.get_running_loop().run_in_executor(lib.executor, lib.open)

    async def synthesize(self, text: str, language: str, voice: str = "") -> Speech:
        text = " ".join(text.split())
        if not text:
            raise SpeechError("nothing to say (empty text)")
        if len(text) > MAX_CHARS:
            raise SpeechError(f"text too long for a voice note ({len(text)} characters)")
        language = language.strip().lower().replace("_", "-")
        if not language:
            raise SpeechError("no language given")
        chosen = self.voice_for(language, voice)
        lib = _Library.get()
        samples = await asyncio.get_running_loop().run_in_executor(
            lib.executor, lib.synthesize, text, language, chosen, self.rate
        )
        if len(samples) == 0:
            raise SpeechError(f"espeak-ng produced no audio for {text[:40]!r}")
        try:
            audio = await asyncio.to_thread(pcm_to_ogg_opus, samples, lib.sample_rate)
        except AudioError as e:
            raise SpeechError(f"could not encode the voice note: {e}") from e
        return Speech(
            audio=audio,
            content_type="audio/ogg",
            duration_s=len(samples) / lib.sample_rate,
            engine=self.name,
            voice=chosen,
        )
