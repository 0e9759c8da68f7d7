"""The conversation's language as a prior.

Per message, :class:`LanguagePolicy` decides the language of the turn:

1. A request for a language ("in English please", "en español", "fala português")
   sets it and it sticks until the user asks for another.
2. Messages with little or no language in them keep the conversation's language:
   numbers, emojis, URLs, e-mail addresses, product codes, "ok", and other very short
   texts. Common chat words ("hello", "gracias", "obrigado") are recognised from a small
   lexicon, since that is where detectors are weakest.
3. Otherwise the detector is asked. The first message takes its best guess; later a
   switch needs clear evidence: a confidence of at least ``switch_confidence`` and, for
   one- or two-word messages, a stricter bar, since short texts are where detectors fail
   (on lingua's test set even lingua gets 44–74 % of single words right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from i18n.detect import Detection, Detector
from runtime.text import strip_accents

# Names users give languages, in the languages the example bot speaks and a few more.
LANGUAGE_NAMES: dict[str, tuple[str, ...]] = {
    "en": ("english", "ingles", "inglés", "inglês"),
    "es": ("spanish", "espanol", "español", "castellano", "espanhol"),
    "pt": ("portuguese", "portugues", "portugués", "português"),
    "fr": ("french", "frances", "francés", "francês", "francais", "français"),
    "de": ("german", "aleman", "alemán", "alemao", "alemão", "deutsch"),
    "it": ("italian", "italiano"),
}
# The short things people write to a chat bot, where detectors are weakest (lingua
# reads "hello" as Spanish). They name the language of a first message; later they keep
# the conversation's language, like any short message.
CHAT_WORDS: dict[str, str] = {  # greetings, thanks, goodbyes
    "en": "hi|hello|hey|hiya|hi there|hello there|thanks|thank you|thanks a lot|thx|bye|"
    "goodbye|bye bye|good morning|good afternoon|good evening|sorry|cool|great",
    "es": "hola|holi|holis|buenas|buenos dias|buenas tardes|buenas noches|gracias|"
    "muchas gracias|mil gracias|adios|chao|chau|hasta luego|perdon|genial|dale",
    "pt": "ola|oi|oie|opa|bom dia|boa tarde|boa noite|obrigado|obrigada|muito obrigado|"
    "muito obrigada|valeu|tchau|ate logo|desculpa|beleza|legal",
    "fr": "bonjour|salut|bonsoir|merci|merci beaucoup|au revoir",
    "de": "hallo|guten tag|guten morgen|danke|danke schon|tschuss",
    "it": "ciao|buongiorno|buonasera|grazie|grazie mille|arrivederci",
}
ANSWER_WORDS: dict[str, str] = {  # answers
    "en": "yes|yeah|yep|no|nope|ok|okay|please|help",
    "es": "si|no|vale|ok|claro|por favor|ayuda",
    "pt": "sim|nao|ok|claro|por favor|ajuda",
    "fr": "oui|non|ok|d'accord|s'il vous plait",
    "de": "ja|nein|ok|bitte",
    "it": "si|no|ok|per favore",
}
_LEAD = (
    r"(?:(?:please|pls|por favor|porfa)[, ]+)?"
    r"(?:(?:can|could) you |puedes |pode |podes )?"
    r"(?:(?:speak|talk|write|reply|answer|respond|habla(?:me|r)?|hablas|escribe(?:me)?|"
    r"responde(?:me)?|fala(?:r)?|falas|escreve(?:r)?|responda)\s+(?:to me\s+|comigo\s+)?)?"
    r"(?:in|en|em|no|na)?\s*"
)
_TAIL = r"(?:[, ]+(?:please|pls|por favor|porfa))?\s*[.!?]*"
_NOISE = re.compile(
    r"https?://\S+|www\.\S+|\S+@\S+\.\w+|\b[A-Za-z]{1,3}[-\s]?\d{3,}\b|"
    r"\b(?=[^\W_]*\d)[^\W_]+\b|"  # a word with a digit in it: a code (hb7cf3710bb9)
    r"[\d.,:;/+\-#%€$£]+",
)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


@dataclass(frozen=True)
class LanguageDecision:
    language: str
    confidence: float
    detected: str | None
    changed: bool
    explicit: bool
    reason: str  # requested | sticky | ambiguous | detected | default | prior


class LanguagePolicy:
    def __init__(
        self,
        detector: Detector,
        languages: list[str],
        switch_confidence: float = 0.6,
        min_letters: int = 4,
    ) -> None:
        self.detector = detector
        self.languages = languages
        self.default = languages[0]
        self.switch_confidence = switch_confidence
        self.min_letters = min_letters
        self._lexicon: dict[str, set[str]] = {}  # phrase → languages
        for table in (ANSWER_WORDS, CHAT_WORDS):
            for code, phrases in table.items():
                if code in languages:
                    for phrase in phrases.split("|"):
                        self._lexicon.setdefault(phrase, set()).add(code)
        self._requests = [
            (
                code,
                re.compile(
                    _LEAD + "(?:" + "|".join(map(re.escape, names)) + ")" + _TAIL, re.IGNORECASE
                ),
            )
            for code, names in LANGUAGE_NAMES.items()
            if code in languages
        ]

    def requested(self, text: str) -> str | None:
        """The language a message asks for ("in English please"), if it is one of ours."""
        cleaned = " ".join(text.strip().lower().split())
        if len(cleaned) > 60:
            return None
        for candidate in (cleaned, strip_accents(cleaned)):
            for code, pattern in self._requests:
                if pattern.fullmatch(candidate):
                    return code
        return None

    def lexicon(self, text: str) -> set[str]:
        """For a message made only of common chat phrases ("hola, buenas tardes"), the
        languages they share. It names the language of a first message; later, such
        messages ("thanks!", "ok") keep the conversation's language."""
        plain = strip_accents(text.lower())
        langs: set[str] | None = None
        for chunk in filter(None, (" ".join(c.split()) for c in re.split(r"[^\w\s']+", plain))):
            if chunk not in self._lexicon:
                return set()
            langs = self._lexicon[chunk] if langs is None else langs & self._lexicon[chunk]
        return langs or set()

    @staticmethod
    def signal(text: str) -> str:
        """The part of a message that carries language: no codes, numbers, links, emoji."""
        return " ".join(_NOISE.sub(" ", text).split())

    def decide(
        self,
        text: str,
        current: str | None,
        sticky: bool = False,
        heard: Detection | None = None,
    ) -> LanguageDecision:
        """``heard``: the language a speech engine identified from the audio of a voice
        note; it replaces text detection (the audio says more than its transcript)."""
        asked = self.requested(text)
        if asked is not None:
            return LanguageDecision(asked, 1.0, asked, asked != current, True, "requested")
        if current is not None and sticky:
            return LanguageDecision(current, 1.0, None, False, True, "sticky")
        signal = self.signal(text)
        known = self.lexicon(text)
        if heard is not None and heard.language in self.languages:
            found = heard
        elif len(known) == 1 and current is None:
            found = Detection(next(iter(known)), 1.0)
        elif known or len(_LETTER.findall(signal)) < self.min_letters:
            language = current or self.default
            return LanguageDecision(language, 0.0, None, False, False, "ambiguous")
        else:
            found = self.detector.detect(signal)
        if current is None:
            sure = found.language is not None and found.confidence >= self.switch_confidence
            language = found.language if sure and found.language else self.default
            reason = "detected" if sure else "default"
            return LanguageDecision(
                language, found.confidence, found.language, False, False, reason
            )
        if found.language is None or found.language == current:
            return LanguageDecision(
                current, found.confidence, found.language, False, False, "prior"
            )
        words = len(signal.split())
        bar = self.switch_confidence if words >= 3 else max(self.switch_confidence, 0.95)
        if found.confidence >= bar:
            return LanguageDecision(
                found.language, found.confidence, found.language, True, False, "detected"
            )
        return LanguageDecision(current, found.confidence, found.language, False, False, "prior")
