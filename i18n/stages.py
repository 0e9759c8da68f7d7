"""The turn's language stages.

DetectLanguage   the conversation's language (prior) + this message → the turn's
                 language; the ``language`` slot; recorded in the message metadata
TranslateForNLU  a language without training data → the default language for NLU
LocalizeReplies  replies without an authored variant in the user's language are
                 machine-translated (button titles too, payloads never)
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Protocol

from i18n.detect import Detection
from i18n.language import LanguagePolicy
from i18n.reviewed import ReviewedTranslations
from runtime.errors import HablaError
from runtime.messages import BotReply, Button, mask_phone
from runtime.preferences import LanguageStore
from runtime.turn import TurnContext

logger = logging.getLogger(__name__)


class Translates(Protocol):
    async def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...


class DetectLanguage:
    def __init__(self, policy: LanguagePolicy, store: LanguageStore) -> None:
        self.policy, self.store = policy, store

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        current, explicit = await self.store.get(msg.conversation_id)
        # a tapped button or an intent the runtime triggers carries no language
        text = "" if msg.button_payload or msg.text.startswith("/") else msg.text
        voice = ctx.voice_in
        heard = (  # even when the words could not be used ("say it again"), in it
            Detection(voice.language, voice.language_confidence)
            if voice is not None and voice.language
            else None
        )
        decision = self.policy.decide(text, current, sticky=explicit, heard=heard)
        if decision.language != current or decision.explicit != explicit:
            await self.store.set(msg.conversation_id, decision.language, decision.explicit)
            if current is not None:
                logger.info(
                    "conversation %s now in %s (%s)",
                    mask_phone(msg.conversation_id),
                    decision.language,
                    decision.reason,
                )
        record = {
            "code": decision.language,
            "detected": decision.detected,
            "confidence": round(decision.confidence, 3),
            "reason": decision.reason,
            "previous": current,  # the conversation's language before this message
        }
        if heard is not None:  # the speech engine's language of the voice note
            record["heard"] = heard.language
        msg = replace(
            msg,
            slots={**msg.slots, "language": decision.language},
            metadata={**msg.metadata, "language": record},
        )
        return replace(ctx, inbound=msg, language=decision.language)


class TranslateForNLU:
    """NLU in the default language for languages the training data does not cover."""

    def __init__(
        self, translator: Translates | None, nlu_languages: list[str], default: str
    ) -> None:
        self.translator, self.nlu_languages, self.default = translator, nlu_languages, default

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        if (
            self.translator is None
            or not msg.text
            or msg.text.startswith("/")
            or msg.button_payload
            or ctx.language in self.nlu_languages
            or not ctx.language
        ):
            return ctx
        try:
            [text] = await self.translator.translate([msg.text], ctx.language, self.default)
        except HablaError as e:
            logger.warning("translation for NLU failed (%s); parsing the original text", e)
            return ctx
        metadata = {**msg.metadata, "original_text": msg.text}
        return replace(ctx, inbound=replace(msg, text=text, metadata=metadata))


class AuthoredResponses:
    """Which reply texts are the default-language text of a response, and which
    languages have authored variants (conditions on the ``language`` slot)."""

    def __init__(self, responses: dict[str, list[dict[str, Any]]]) -> None:
        self.patterns: list[tuple[re.Pattern[str], set[str]]] = []
        self.languages: set[str] = set()
        for variations in responses.values():
            langs = {
                str(c.get("value"))
                for v in variations
                for c in v.get("condition") or []
                if c.get("name") == "language"
            }
            self.languages |= langs
            for v in variations:
                if not v.get("condition") and v.get("text"):
                    parts = re.split(r"\{[^{}]+\}", str(v["text"]))
                    pattern = re.compile("(?s)" + ".+?".join(map(re.escape, parts)))
                    self.patterns.append((pattern, langs))

    def needs_translation(self, text: str, language: str) -> bool:
        """The reply is in the default language and ``language`` has no variant of it."""
        if not text:
            return False
        for pattern, langs in self.patterns:
            if pattern.fullmatch(text):
                return language not in langs
        return language not in self.languages  # action text: translate if never authored


class LocalizeReplies:
    """Replies without an authored variant in the turn's language: a reviewed
    translation (``translations/<lang>.yml``, i18n/reviewed.py) first, else the
    machine translation."""

    def __init__(
        self,
        translator: Translates | None,
        authored: AuthoredResponses,
        default: str,
        reviewed: ReviewedTranslations | None = None,
    ) -> None:
        self.translator, self.authored, self.default = translator, authored, default
        self.reviewed = reviewed
        self._logged: set[tuple[str, str]] = set()

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        lang = ctx.language
        if not lang or lang == self.default:
            return ctx
        gaps = [
            i for i, r in enumerate(ctx.replies) if self.authored.needs_translation(r.text, lang)
        ]
        if gaps and self.reviewed is not None:
            ctx, gaps = self._use_reviewed(ctx, gaps, lang)
        if not gaps:
            return ctx
        if self.translator is None:
            for i in gaps:
                key = (ctx.replies[i].text, lang)
                if key not in self._logged:
                    self._logged.add(key)
                    logger.info(
                        "no '%s' variant and no translator: sent as authored: %r",
                        lang,
                        ctx.replies[i].text[:80],
                    )
            return ctx
        texts: list[str] = []
        for i in gaps:
            texts.append(ctx.replies[i].text)
            texts.extend(b.title for b in ctx.replies[i].buttons)
        try:
            translated = await self.translator.translate(texts, self.default, lang)
        except HablaError as e:
            logger.warning("translation to %s failed (%s); replying as authored", lang, e)
            return ctx
        replies = list(ctx.replies)
        it = iter(translated)
        for i in gaps:
            reply = replies[i]
            text = next(it)
            buttons = tuple(Button(next(it), b.payload) for b in reply.buttons)
            replies[i] = BotReply(
                text=text,
                buttons=buttons,
                image=reply.image,
                attachment=reply.attachment,
                custom=reply.custom,
            )
        return replace(ctx, replies=tuple(replies))

    def _use_reviewed(
        self, ctx: TurnContext, gaps: list[int], lang: str
    ) -> tuple[TurnContext, list[int]]:
        """Replace the replies a reviewed translation covers; the others are still gaps
        (so are those with a button the translation does not name)."""
        assert self.reviewed is not None
        replies, left = list(ctx.replies), []
        for i in gaps:
            reply = replies[i]
            found = self.reviewed.find(reply.text, lang, ctx.inbound.channel)
            if found is None or any(b.payload not in found[0].titles for b in reply.buttons):
                left.append(i)
                continue
            reviewed, text = found
            buttons = tuple(Button(reviewed.titles[b.payload], b.payload) for b in reply.buttons)
            replies[i] = replace(reply, text=text, buttons=buttons)
        return replace(ctx, replies=tuple(replies)), left
