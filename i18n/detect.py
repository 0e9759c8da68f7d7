"""Language detection behind one seam, restricted to the bot's languages.

Two detectors, registered by the name used in ``HABLA_LANGUAGE_DETECTOR``:

* ``lingua`` (lingua-language-detector): n-gram models of up to five characters,
  the most accurate on short texts in ``bench/langid.py``; the default.
* ``langdetect``: the port of Google's language-detection, seeded so that it answers
  the same way every run (unseeded it samples randomly).

Both return the most likely configured language and a confidence in [0, 1] relative
to the other configured languages. Models load once, at construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import Settings


@dataclass(frozen=True)
class Detection:
    language: str | None
    confidence: float


class Detector(ABC):
    name: ClassVar[str]

    def __init__(self, languages: list[str]) -> None:
        self.languages = languages

    @classmethod
    def from_settings(cls, settings: Settings) -> Detector:
        """Build for the bot's languages (registered in runtime/providers.py)."""
        return cls(settings.languages)

    @abstractmethod
    def detect(self, text: str) -> Detection:
        """The most likely configured language of ``text`` (None if there is no signal)."""


class LinguaDetector(Detector):
    name = "lingua"

    def __init__(self, languages: list[str]) -> None:
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        super().__init__(languages)
        codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
        self._detector = builder.with_preloaded_language_models().build()

    def detect(self, text: str) -> Detection:
        values = self._detector.compute_language_confidence_values(text)
        if not values or values[0].value <= 0:
            return Detection(None, 0.0)
        top = values[0]
        return Detection(top.language.iso_code_639_1.name.lower(), float(top.value))


class LangdetectDetector(Detector):
    name = "langdetect"

    def __init__(self, languages: list[str]) -> None:
        from langdetect import DetectorFactory
        from langdetect.detector_factory import init_factory

        super().__init__(languages)
        DetectorFactory.seed = 0  # deterministic answers
        init_factory()
        from langdetect.detector_factory import _factory

        self._factory = _factory
        known = set(self._factory.get_lang_list())
        missing = [c for c in languages if self._code(c) not in known]
        if missing:
            raise ValueError(f"langdetect has no model for: {', '.join(missing)}")

    @staticmethod
    def _code(code: str) -> str:
        return {"zh": "zh-cn"}.get(code, code)

    def detect(self, text: str) -> Detection:
        from langdetect.lang_detect_exception import LangDetectException

        detector = self._factory.create()
        detector.append(text)
        try:
            # every language's probability (get_probabilities() drops those under 0.1)
            detector._detect_block()
        except LangDetectException:
            return Detection(None, 0.0)
        wanted = {self._code(c): c for c in self.languages}
        scores = {
            wanted[lang]: float(prob)
            for lang, prob in zip(detector.langlist, detector.langprob, strict=True)
            if lang in wanted
        }
        total = sum(scores.values())
        if not total:
            return Detection(None, 0.0)
        best = max(scores, key=scores.__getitem__)
        return Detection(best, scores[best] / total)
