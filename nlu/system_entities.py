"""System entities without a Duckling server: numbers, amounts of money, e-mail
addresses, phone numbers, URLs, dates and times, in the message's language.

A Rasa 3.6 graph component (``nlu.system_entities.SystemEntityExtractor`` in
config.yml). Entity names are Duckling's (``number``, ``amount-of-money``, ``email``,
``phone-number``, ``url``, ``time``), values are normalised:

=================  ==========================================================
``number``         ``21`` (int) or ``2.5`` (float): digits and words in en/es/pt
``amount-of-money`` ``{"amount": "15.90", "currency": "BRL"}`` (a decimal string)
``email``          the address, lower-cased domain
``phone-number``   E.164 (``+34612345678``); the user's own country is the default
``url``            the URL as written (``www.`` gets ``https://``)
``time``           ISO 8601 with the offset, resolved in the conversation's time zone
=================  ==========================================================

What each message brings (``message.data["metadata"]``, from nlu/engine.py
``rasa_metadata``): ``language.code`` (the turn's language, decided by
i18n/stages.py DetectLanguage), ``phone`` (the sender, ``whatsapp:+34…``: its country
is the default for national numbers, and its time zone when the country has one),
and optionally ``timezone``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

DIMENSIONS = ("amount-of-money", "email", "url", "phone-number", "time", "number")
Span = tuple[int, int]

# ---------------------------------------------------------------- numbers in words

_EN_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ES_UNITS = (
    "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce "
    "quince dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós "
    "veintitrés veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve"
).split()
_ES_TENS = "treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
_ES_HUNDREDS = (
    "ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos "
    "ochocientos novecientos"
).split()
_PT_UNITS = (
    "zero um dois três quatro cinco seis sete oito nove dez onze doze treze catorze "
    "quinze dezesseis dezessete dezoito dezenove"
).split()
_PT_TENS = "vinte trinta quarenta cinquenta sessenta setenta oitenta noventa".split()
_PT_HUNDREDS = (
    "cento duzentos trezentos quatrocentos quinhentos seiscentos setecentos oitocentos novecentos"
).split()


def _words(lang: str) -> dict[str, int]:
    if lang == "es":
        w = {u: i for i, u in enumerate(_ES_UNITS)}
        w.update({t: 30 + 10 * i for i, t in enumerate(_ES_TENS)})
        w.update({h: 100 * (i + 1) for i, h in enumerate(_ES_HUNDREDS)})
        w.update(
            {
                "un": 1,
                "una": 1,
                "veintiún": 21,
                "dieciseis": 16,
                "veintidos": 22,
                "veintitres": 23,
                "veintiseis": 26,
                "cien": 100,
                "mil": 1000,
                "doscientas": 200,
                "quinientas": 500,
            }
        )
    elif lang == "pt":
        w = {u: i for i, u in enumerate(_PT_UNITS)}
        w.update({t: 20 + 10 * i for i, t in enumerate(_PT_TENS)})
        w.update({h: 100 * (i + 1) for i, h in enumerate(_PT_HUNDREDS)})
        w.update(
            {
                "uma": 1,
                "duas": 2,
                "tres": 3,
                "quatorze": 14,
                "dezasseis": 16,
                "dezassete": 17,
                "dezanove": 19,
                "cem": 100,
                "mil": 1000,
                "duzentas": 200,
                "quinhentas": 500,
            }
        )
    else:
        w = {u: i for i, u in enumerate(_EN_UNITS)}
        w.update({t: 20 + 10 * i for i, t in enumerate(_EN_TENS)})
        w.update({"hundred": 100, "thousand": 1000})
    return w


_NUMBER_WORDS = {lang: _words(lang) for lang in ("en", "es", "pt")}
_CONNECTORS = {"en": {"and"}, "es": {"y"}, "pt": {"e"}}
# an article alone is not a number ("quiero una camiseta"); inside a number it is
_ARTICLES = {"un", "una", "um", "uma", "uno"}
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "mil": 1000}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _value_of(words: list[str], table: dict[str, int]) -> int:
    total = current = 0
    for word in words:
        n = table[word]
        if word == "hundred":
            current = max(current, 1) * 100
        elif word in ("thousand", "mil"):
            total += max(current, 1) * 1000
            current = 0
        else:
            current += n
    return total + current


def word_numbers(text: str, lang: str) -> Iterable[tuple[int, int, int]]:
    """(start, end, value) of each number written in words."""
    table = _NUMBER_WORDS.get(lang, _NUMBER_WORDS["en"])
    connectors = _CONNECTORS.get(lang, set())
    tokens = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
    i = 0
    while i < len(tokens):
        if tokens[i][2] not in table:
            i += 1
            continue
        run = [tokens[i]]
        j = i + 1
        while j < len(tokens):
            word = tokens[j][2]
            gap = text[run[-1][1] : tokens[j][0]]
            if gap.strip(" -") or len(gap) > 2:
                break
            if word in table:
                run.append(tokens[j])
                j += 1
            elif (
                word in connectors
                and j + 1 < len(tokens)
                and tokens[j + 1][2] in table
                and not text[tokens[j][1] : tokens[j + 1][0]].strip()
            ):
                run.append(tokens[j + 1])  # "vinte e um", "one hundred and five"
                j += 2
            else:
                break
        words = [t[2] for t in run]
        if not (len(words) == 1 and words[0] in _ARTICLES):
            yield run[0][0], run[-1][1], _value_of(words, table)
        i = j


# ---------------------------------------------------------------- amounts of money

_CURRENCY_SYMBOLS = {"R$": "BRL", "US$": "USD", "€": "EUR", "$": "USD", "£": "GBP"}
_CURRENCY_WORDS = {
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "dólar": "USD",
    "dólares": "USD",
    "brl": "BRL",
    "real": "BRL",
    "reais": "BRL",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
    "libra": "GBP",
    "libras": "GBP",
}
_NUM = r"\d{1,3}(?:[.,\s]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_SYMBOL = "|".join(re.escape(s) for s in sorted(_CURRENCY_SYMBOLS, key=len, reverse=True))
_WORDS = "|".join(sorted(_CURRENCY_WORDS, key=len, reverse=True))
_AMOUNT_BEFORE = re.compile(rf"(?P<cur>{_SYMBOL})\s?(?P<num>{_NUM})")
_AMOUNT_AFTER = re.compile(
    rf"(?<![\w.,])(?P<num>{_NUM})\s?(?:(?P<sym>€|£)|(?P<word>{_WORDS})\b)", re.IGNORECASE
)


def parse_decimal(raw: str, lang: str) -> Decimal | None:
    """ "1.234,56" (es/pt), "1,234.56" (en), "15,90", "20" → a Decimal."""
    s = raw.replace(" ", "")
    if "," in s and "." in s:
        decimal_sep = "," if s.rfind(",") > s.rfind(".") else "."
    elif "," in s:
        tail = s.rsplit(",", 1)[1]
        decimal_sep = "," if len(tail) != 3 or lang != "en" else ""
    elif "." in s:
        tail = s.rsplit(".", 1)[1]
        decimal_sep = "." if len(tail) != 3 or lang == "en" else ""
    else:
        decimal_sep = ""
    thousands = {",", "."} - {decimal_sep}
    for sep in thousands:
        s = s.replace(sep, "")
    if decimal_sep:
        s = s.replace(decimal_sep, ".")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


# ---------------------------------------------------------------- times

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""

_CLOCK = {  # "3 de la tarde", "15h", "3pm", "às 9h30" → 24-hour "HH:MM"
    "en": re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)(?!\w)", re.I),
    "es": re.compile(
        r"\b(\d{1,2})(?:[:h](\d{2}))?\s*(?:h|hs|horas)?\s*"
        r"(de la mañana|de la tarde|de la noche|am|pm)?(?!\w)",
        re.I,
    ),
    "pt": re.compile(
        r"\b(\d{1,2})(?:[:h](\d{2}))?\s*(?:h|hs|horas)?\s*"
        r"(da manhã|da tarde|da noite|de manhã|de tarde|de noite|am|pm)?(?!\w)",
        re.I,
    ),
}
_CLOCK_CUE = {  # the word before the hour that makes a bare number a time
    "en": re.compile(r"\bat\s+$", re.I),
    "es": re.compile(r"\b(?:a\s+las|a\s+la|sobre\s+las|las)\s+$", re.I),
    "pt": re.compile(r"\b(?:às|as|à|a\s+partir\s+das|pelas|das)\s+$", re.I),
}
_AFTERNOON = ("pm", "p.m.", "tarde", "noche", "noite")
# a match must have a digit or one of these, or dateparser finds dates in "mi" or "de"
_TIME_WORDS = {
    "en": "today tonight tomorrow yesterday morning afternoon evening noon midnight week "
    "month year monday tuesday wednesday thursday friday saturday sunday january "
    "february march april may june july august september october november december "
    "next hour hours minutes",
    "es": "hoy mañana ayer pasado tarde noche mediodía medianoche semana mes año lunes "
    "martes miércoles jueves viernes sábado domingo enero febrero marzo abril mayo junio "
    "julio agosto septiembre octubre noviembre diciembre próximo próxima hora horas "
    "minutos",
    "pt": "hoje amanhã ontem depois tarde noite manhã meio-dia meia-noite semana mês ano "
    "segunda terça quarta quinta sexta sábado domingo janeiro fevereiro março abril maio "
    "junho julho agosto setembro outubro novembro dezembro próximo próxima hora horas "
    "minutos",
}
# digits alone ("2,5", "3") are numbers, not dates: a clock or a day/month/year pattern
_DATE_OR_CLOCK = re.compile(
    r"\d:\d\d|\b\d{1,4}[/-]\d{1,2}(?:[/-]\d{2,4})?\b|\b\d{1,2}\.\d{1,2}\.\d{2,4}\b"
)
_TIME_VOCAB = {lang: set(words.split()) for lang, words in _TIME_WORDS.items()}


def normalise_clock(text: str, lang: str, spans: list[Span] | None = None) -> str:
    """Clock times dateparser misreads ("15h" as a date, "3 de la tarde" not at all)
    rewritten as "HH:MM", the same length kept where it can be (spans stay put)."""
    pattern, cue = _CLOCK.get(lang), _CLOCK_CUE.get(lang)
    if pattern is None or cue is None:
        return text
    out, last = [], 0
    for m in pattern.finditer(text):
        hour, minute, part = int(m.group(1)), int(m.group(2) or 0), (m.group(3) or "")
        explicit = bool(m.group(2)) or bool(part) or "h" in m.group(0)[len(m.group(1)) :]
        if not (explicit or cue.search(text[: m.start()])) or hour > 23 or minute > 59:
            continue
        if any(p in part.lower() for p in _AFTERNOON) and hour < 12:
            hour += 12
        elif part.lower() in ("am", "a.m.") and hour == 12:
            hour = 0
        clock = f"{hour:02d}:{minute:02d}"
        out.append(text[last : m.start()] + clock.ljust(m.end() - m.start()))
        if spans is not None:
            spans.append((m.start(), m.end()))
        last = m.end()
    return "".join(out) + text[last:]


# ---------------------------------------------------------------- the component


def sender_region(metadata: dict[str, Any]) -> str | None:
    """ "ES" for a message from whatsapp:+34…, None when unknown."""
    phone = str(metadata.get("phone") or "")
    phone = phone.split(":", 1)[1] if ":" in phone else phone
    if not phone.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)


def message_language(metadata: dict[str, Any], default: str) -> str:
    language = metadata.get("language")
    if isinstance(language, dict):
        language = language.get("code")
    return str(language or default).split("-")[0].lower()


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=False)
class SystemEntityExtractor(GraphComponent, EntityExtractorMixin):
    """Duckling's dimensions for en/es/pt, offline (phonenumbers, dateparser, rules)."""

    # when "now" is; tests replace it (the same for every instance)
    clock: Callable[[], datetime] = staticmethod(lambda: datetime.now(timezone.utc))

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        return {
            "dimensions": None,  # None: all of DIMENSIONS
            "default_language": "en",  # when the message does not say
            "default_region": None,  # e.g. "ES": national numbers when the sender is unknown
            "timezone": "UTC",  # dates and times, unless the message or the sender says
            "timezone_from_phone": True,  # the sender's country's zone, if it has one
        }

    def __init__(self, config: dict[str, Any]) -> None:
        self.component_config = config
        self.dimensions = set(config.get("dimensions") or DIMENSIONS)
        self.default_tz = _zone(config.get("timezone")) or timezone.utc

    @classmethod
    def create(
        cls,
        config: dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> SystemEntityExtractor:
        return cls(config)

    def process(self, messages: list[Message]) -> list[Message]:
        for message in messages:
            text = message.get(TEXT)
            if not isinstance(text, str) or not text or text.startswith("/"):
                continue
            metadata = message.get("metadata") or {}
            found = self.extract(text, metadata if isinstance(metadata, dict) else {})
            message.set(
                ENTITIES,
                message.get(ENTITIES, []) + self.add_extractor_name(found),
                add_to_output=True,
            )
        return messages

    def extract(self, text: str, metadata: dict[str, Any]) -> list[dict[str, Any]]:
        """Every entity in ``text``; spans do not overlap (the earlier dimension wins)."""
        lang = message_language(metadata, self.component_config["default_language"])
        region = sender_region(metadata) or self.component_config.get("default_region")
        taken: list[Span] = []
        out: list[dict[str, Any]] = []

        def add(start: int, end: int, dim: str, value: Any, **extra: Any) -> None:
            if dim not in self.dimensions or any(s < end and start < e for s, e in taken):
                return
            taken.append((start, end))
            out.append(
                {
                    "entity": dim,
                    "start": start,
                    "end": end,
                    "value": value,
                    "text": text[start:end],
                    "confidence": 1.0,
                    **extra,
                }
            )

        for m in _EMAIL.finditer(text):
            local, domain = m.group().rsplit("@", 1)
            add(m.start(), m.end(), "email", f"{local}@{domain.lower()}")
        for m in _URL.finditer(text):
            url = m.group().rstrip(_TRAILING)
            full = url if "://" in url else "https://" + url
            add(m.start(), m.start() + len(url), "url", full)
        for m in _AMOUNT_BEFORE.finditer(text):
            self._amount(add, m, _CURRENCY_SYMBOLS[m.group("cur")], lang)
        for m in _AMOUNT_AFTER.finditer(text):
            cur = m.group("sym") or m.group("word")
            code = _CURRENCY_SYMBOLS.get(cur) or _CURRENCY_WORDS[cur.lower()]
            self._amount(add, m, code, lang)
        for pm in phonenumbers.PhoneNumberMatcher(text, region or "ZZ"):
            e164 = phonenumbers.format_number(pm.number, phonenumbers.PhoneNumberFormat.E164)
            add(pm.start, pm.end, "phone-number", e164)
        if "time" in self.dimensions:
            for start, end, when in self._times(text, taken, lang, metadata, region):
                add(start, end, "time", when.isoformat(), additional_info={"tz": str(when.tzinfo)})
        for m in re.finditer(r"(?<![\w.,])-?\d+(?:[.,]\d+)?(?![\w])", text):
            value = parse_decimal(m.group(), lang)
            if value is not None:
                add(m.start(), m.end(), "number", _plain(value))
        for start, end, n in word_numbers(text, lang):
            add(start, end, "number", n)
        return sorted(out, key=lambda e: e["start"])

    @staticmethod
    def _amount(add: Callable[..., None], m: re.Match[str], currency: str, lang: str) -> None:
        value = parse_decimal(m.group("num"), lang)
        if value is not None:
            add(m.start(), m.end(), "amount-of-money", {"amount": str(value), "currency": currency})

    def timezone_for(self, metadata: dict[str, Any], region: str | None) -> tzinfo:
        """The message's ``timezone``, else the sender's country's only zone, else the
        configured one."""
        zone = _zone(metadata.get("timezone"))
        if zone is not None:
            return zone
        if self.component_config.get("timezone_from_phone") and metadata.get("phone"):
            phone = str(metadata["phone"]).split(":")[-1]
            try:
                zones = phone_timezones.time_zones_for_number(phonenumbers.parse(phone, None))
            except phonenumbers.NumberParseException:
                zones = ()
            if len(zones) == 1:
                zone = _zone(zones[0])
            elif zones and region:  # several (Spain: Madrid and the Canaries): the capital's
                zone = _zone(_CAPITAL_ZONES.get(region, ""))
            if zone is not None:
                return zone
        return self.default_tz

    def _times(
        self,
        text: str,
        taken: list[Span],
        lang: str,
        metadata: dict[str, Any],
        region: str | None,
    ) -> list[tuple[int, int, datetime]]:
        from dateparser.search import search_dates

        masked = list(text)
        for s, e in taken:  # phone numbers and amounts are not dates
            masked[s:e] = " " * (e - s)
        clocks: list[Span] = []
        searchable = normalise_clock("".join(masked), lang, clocks)
        zone = self.timezone_for(metadata, region)
        now = self.clock().astimezone(zone)
        settings = {
            "RELATIVE_BASE": now.replace(tzinfo=None),
            "PREFER_DATES_FROM": "future",
            "RETURN_AS_TIMEZONE_AWARE": False,
        }
        languages = [lang] if lang in ("en", "es", "pt") else None
        try:
            found = search_dates(searchable, languages=languages, settings=settings) or []
        except Exception:  # dateparser raises on odd input; a missing date is no reason to fail
            return []
        vocab = _TIME_VOCAB.get(lang, set())
        out: list[tuple[int, int, datetime]] = []
        cursor = 0
        for phrase, when in found:
            # dateparser collapses runs of spaces (a masked phone number) in its phrase
            pattern = r"\s+".join(re.escape(w) for w in phrase.split())
            hit = re.compile(pattern).search(searchable, cursor) if pattern else None
            if hit is None:
                continue
            at, cursor = hit.start(), hit.end()
            phrase = hit.group()
            words = {w.lower() for w in _WORD.findall(phrase)}
            if not (_DATE_OR_CLOCK.search(phrase) or words & vocab):
                continue
            lead = len(phrase) - len(phrase.lstrip())
            start, end = at + lead, at + len(phrase.rstrip())
            # leading prepositions dateparser keeps ("at tomorrow") are not the time
            while True:
                m = re.match(
                    r"(?:at|on|in|a|al|el|las|la|em|no|na|às|as|para)\s+",
                    searchable[start:end],
                    re.I,
                )
                if not m:
                    break
                start += m.end()
            for s, e in clocks:  # "a las 15:00" ends where "3 de la tarde" did
                if s < end <= e:
                    end = e
            out.append((start, end, when.replace(tzinfo=zone)))
        return out


_CAPITAL_ZONES = {
    "ES": "Europe/Madrid",
    "PT": "Europe/Lisbon",
    "BR": "America/Sao_Paulo",
    "US": "America/New_York",
    "MX": "America/Mexico_City",
    "AR": "America/Argentina/Buenos_Aires",
    "CL": "America/Santiago",
}


def _zone(name: Any) -> tzinfo | None:
    if not name or not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _plain(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)
