"""Machine translation: one seam for every provider, placeholder protection and a cache.

A :class:`Translator` adapter only sends HTML to its provider and parses the answer.
The base protects what must not change (``{placeholders}``, URLs, e-mail addresses,
numbers and prices, product codes, Rasa ``/payloads``) in ``translate="no"`` spans,
restores the text afterwards and maps errors once: :class:`TransientError` (429, 5xx,
timeouts, connection errors) or :class:`PermanentError` (other 4xx, credentials).
:class:`CachingTranslator` adds a SQLite or Redis cache in front of any translator.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp

from runtime.errors import HablaError, PermanentError, TransientError, error_for_status
from runtime.settings import Settings
from runtime.translation_cache import TranslationCache

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- placeholder protection

OPEN = '<span translate="no" class="notranslate">'
CLOSE = "</span>"

_CODE_CHARS = r"[A-Za-z0-9_-]"
_PROTECTED = re.compile(
    "|".join(
        (
            r"(?:https?://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]",  # URL
            r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail address
            r"\{\{\s*[\w.-]+\s*\}\}|\{[\w.-]+\}",  # {placeholder}, {{ placeholder }}
            # product/order codes: letters and digits (AB12345, SKU-12A, 4G), not "2nd"
            rf"(?<![\w-])(?:[A-Za-z]{_CODE_CHARS}*\d|\d{_CODE_CHARS}*[A-Z]){_CODE_CHARS}*"
            r"(?<![_-])(?![\w-])",
            # numbers and prices: 19.90, 4,90 €, $5, +34, 10:30, 12/05/2025, 15% (not 2nd, 10am)
            r"(?:[$€£¥][ \u00a0]?)?\+?\d+(?:[.,:/-]\d+)*(?![.,:/-]?\w)(?:[ \u00a0]?[€$£¥%])?",
        )
    )
)
_PAYLOAD = re.compile(r"\s*/\w")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")


def protected_spans(text: str) -> list[str]:
    """The parts of ``text`` that translation must leave unchanged."""
    if _PAYLOAD.match(text):
        return [text]
    return [m.group() for m in _PROTECTED.finditer(text)]


def protect(text: str) -> str:
    """``text`` as HTML with every protected span wrapped in a ``translate="no"`` span."""
    if _PAYLOAD.match(text):
        parts = [OPEN + html.escape(text, quote=False) + CLOSE]
    else:
        parts, end = [], 0
        for m in _PROTECTED.finditer(text):
            parts.append(html.escape(text[end : m.start()], quote=False))
            parts.append(OPEN + html.escape(m.group(), quote=False) + CLOSE)
            end = m.end()
        parts.append(html.escape(text[end:], quote=False))
    return "".join(parts).replace("\n", "<br>")


def restore(html_text: str) -> str:
    """Plain text back from :func:`protect`'s HTML (after translation): unwrap, unescape."""
    return html.unescape(_TAG.sub("", _BR.sub("\n", html_text)))


def translatable(text: str) -> bool:
    """Whether ``text`` has any words outside its protected spans."""
    if _PAYLOAD.match(text):
        return False
    return any(c.isalpha() for c in _PROTECTED.sub("", text))


# ---------------------------------------------------------------- translators


def status_error(
    provider: str, status: int, message: str, retry_after: float | None = None
) -> Exception:
    """The error for a provider's HTTP status: 408, 429 and 5xx are transient."""
    return error_for_status(status, f"{provider} {status}: {message}".strip(), retry_after)


def _lang(code: str) -> str:
    return code.strip().lower()


class Translator(ABC):
    """A machine-translation provider. Adapters implement :meth:`_translate_html`."""

    name: ClassVar[str]
    max_batch: ClassVar[int] = 100  # texts per provider request

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.timeout_s = settings.send.timeout_s

    @classmethod
    def from_settings(
        cls, settings: Settings, session: aiohttp.ClientSession | None = None
    ) -> Translator:
        """Build from the settings (registered in runtime/providers.py TRANSLATORS);
        ``session``: a shared aiohttp session (tests inject theirs)."""
        return cls(settings, session)

    async def start(self) -> None:
        """Open connections (inside the running event loop)."""
        return None

    async def close(self) -> None:
        """Close what :meth:`start` opened."""
        return None

    @abstractmethod
    async def _translate_html(self, texts: list[str], source: str, target: str) -> list[str]:
        """Translate HTML fragments; ``source`` is "" for auto-detection."""

    def map_error(self, error: Exception) -> Exception | None:
        """The Transient/PermanentError for an adapter's exception (None: not an error
        of the provider, re-raised as is)."""
        if isinstance(error, (asyncio.TimeoutError, aiohttp.ClientError, OSError)):
            return TransientError(f"{self.name}: {type(error).__name__}: {error}")
        if isinstance(error, (KeyError, IndexError, TypeError, ValueError)):
            return PermanentError(f"{self.name}: unexpected response: {error!r}")
        return None

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        """Translate ``texts`` from ``source`` ("" to detect) to ``target`` (ISO 639-1)."""
        source, target = _lang(source), _lang(target)
        out = list(texts)
        todo = [i for i, text in enumerate(texts) if translatable(text)]
        if source == target or not todo:
            return out
        for start in range(0, len(todo), self.max_batch):
            batch = todo[start : start + self.max_batch]
            cores = [texts[i].strip() for i in batch]
            done = await self._call([protect(core) for core in cores], source, target)
            for i, translated in zip(batch, done, strict=True):
                lead = texts[i][: len(texts[i]) - len(texts[i].lstrip())]
                trail = texts[i][len(texts[i].rstrip()) :]
                out[i] = lead + restore(translated).strip() + trail
        return out

    async def _call(self, htmls: list[str], source: str, target: str) -> list[str]:
        try:
            done = await asyncio.wait_for(
                self._translate_html(htmls, source, target), self.timeout_s
            )
        except HablaError:
            raise
        except Exception as e:
            mapped = self.map_error(e)
            if mapped is None:
                raise
            raise mapped from e
        if len(done) != len(htmls):
            raise PermanentError(f"{self.name}: sent {len(htmls)} texts, got {len(done)} back")
        return done


class HttpTranslator(Translator):
    """A JSON-over-HTTP provider with an injected (or own) aiohttp session."""

    default_base: ClassVar[str] = ""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(settings, session)
        self.key = settings.i18n.translator_key
        self.base = (settings.i18n.translator_url or self.default_base).rstrip("/")
        self.session = session
        self._own_session = False

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
            self._own_session = True

    async def close(self) -> None:
        if self._own_session and self.session is not None:
            await self.session.close()
            self.session, self._own_session = None, False

    async def _post_json(
        self,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """POST ``payload`` as JSON; the decoded answer, or the mapped provider error."""
        if self.session is None:
            await self.start()
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self.session.post(
            url, json=payload, headers=headers, params=params, timeout=timeout
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if resp.status >= 400:
                raise status_error(self.name, resp.status, _error_message(body), _retry_after(resp))
            return body


def _error_message(body: Any) -> str:
    """The message of Azure ({"error": {"message"}}), DeepL ({"message"}) or
    LibreTranslate ({"error"}) error bodies."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')} {error.get('message', '')}".strip()
    return str(error or body.get("message") or "")


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class CachingTranslator:
    """A translator behind a cache: only misses are sent, in one call, each text once.

    Cache failures are logged and treated as misses; provider errors propagate.
    """

    def __init__(self, translator: Translator, cache: TranslationCache) -> None:
        self.translator = translator
        self.cache = cache

    @property
    def name(self) -> str:
        return self.translator.name

    async def start(self) -> None:
        await self.translator.start()

    async def close(self) -> None:
        await self.translator.close()

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        """Like :meth:`Translator.translate`, answering repeated texts from the cache."""
        source, target = _lang(source), _lang(target)
        unique = [t for t in dict.fromkeys(texts) if translatable(t)]
        if source == target or not unique:
            return list(texts)
        try:
            known = await self.cache.get_many(self.name, source, target, unique)
        except Exception:
            logger.warning("translation cache read failed", exc_info=True)
            known = {}
        misses = [t for t in unique if t not in known]
        if misses:
            done = await self.translator.translate(misses, source, target)
            fresh = dict(zip(misses, done, strict=True))
            try:
                await self.cache.put_many(self.name, source, target, fresh)
            except Exception:
                logger.warning("translation cache write failed", exc_info=True)
            known.update(fresh)
        return [known.get(t, t) for t in texts]
