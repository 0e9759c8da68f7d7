"""The turn's voice stages.

Transcribe  a voice note → downloaded (size and type checked) → speech-to-text in the
            bot's languages → the transcript is the message's text; its language,
            confidence and duration go into the message metadata. Audio that cannot
            be used becomes an intent the dialogue answers in the user's language:
            ``/voice_unclear`` (silence, low confidence: "say it again") or
            ``/voice_rejected`` (too long, too large, not audio, corrupt).
ReplyMode   "text only please" / "solo texto" / "manda áudio" set a sticky preference
            and become ``/reply_text_only`` or ``/reply_with_voice`` for the dialogue to confirm.
Speak       a user who spoke this turn gets the replies as a voice note in the turn's
            language (and the text, per settings), hosted at a signed URL or uploaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import replace
from typing import Any

from runtime.errors import MediaError, SpeechError
from runtime.media import MediaHost
from runtime.messages import BotReply, MediaRef, mask_phone
from runtime.preferences import LanguageStore
from runtime.settings import VoiceSettings
from runtime.text import strip_accents
from runtime.turn import TurnContext, VoiceIn, VoiceOut
from voice.stt.base import SpeechToText, Transcript
from voice.tts.base import TextToSpeech

logger = logging.getLogger(__name__)

AUDIO_KINDS = ("audio", "voice")
REPLY_MODE = "reply_mode"


def voice_note(media: tuple[MediaRef, ...]) -> MediaRef | None:
    for m in media:
        if m.kind in AUDIO_KINDS or m.content_type.split(";")[0].strip().startswith("audio/"):
            return m
    return None


def trigger(intent: str, **entities: str) -> str:
    """Text that makes Rasa predict ``intent`` with ``entities`` (no NLU involved)."""
    return f"/{intent}" + (json.dumps(entities) if entities else "")


class Transcribe:
    def __init__(
        self,
        stt: SpeechToText | None,
        settings: VoiceSettings,
        languages: list[str],
        store: LanguageStore,
    ) -> None:
        self.stt, self.settings, self.languages, self.store = stt, settings, languages, store

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        note = voice_note(msg.media)
        if note is None or msg.text.strip():
            return ctx
        heard = _Heard(VoiceIn(kind=note.kind or "audio"))
        try:
            transcript = await self._transcribe(ctx, note, heard)
        except _Unusable as e:
            voice = replace(heard.voice, error=e.reason)
            intent = "voice_unclear" if e.retry else "voice_rejected"
            logger.info(
                "voice note from %s not used (%s): %s",
                mask_phone(msg.conversation_id),
                intent,
                e.reason,
            )
            text = trigger(intent)
        else:
            voice = replace(
                heard.voice,
                transcript=transcript.text,
                language=transcript.language or "",
                language_confidence=transcript.language_confidence or transcript.confidence,
                confidence=transcript.confidence,
                duration_s=round(transcript.duration_s, 2),
                engine=transcript.engine,
            )
            text = transcript.text
        new = replace(msg, text=text, metadata={**msg.metadata, "voice": voice.record()})
        return replace(ctx, inbound=new, voice_in=voice)

    async def _transcribe(self, ctx: TurnContext, note: MediaRef, heard: _Heard) -> Transcript:
        s = self.settings
        if self.stt is None:
            raise _Unusable("speech-to-text is off", retry=False)
        try:
            data, content_type = await ctx.output.fetch_media(note, s.max_bytes)
        except MediaError as e:
            raise _Unusable(str(e), retry=e.transient) from e
        content_type = content_type.split(";")[0].strip().lower()
        heard.update(content_type=content_type, bytes=len(data))
        if not data:
            raise _Unusable("empty media", retry=True)
        if not content_type.startswith("audio/") and content_type != "application/ogg":
            raise _Unusable(f"not audio: {content_type or 'no content type'}", retry=False)
        from voice.audio import AudioError, duration_of

        try:
            duration = await asyncio.to_thread(duration_of, data, content_type)
        except AudioError as e:
            raise _Unusable(f"unreadable audio: {e}", retry=False) from e
        heard.update(duration_s=round(duration, 2))
        if duration > s.max_seconds:
            raise _Unusable(f"{duration:.0f} s long (limit {s.max_seconds:.0f} s)", retry=False)
        current, _ = await self.store.get(ctx.inbound.conversation_id)
        languages = sorted(self.languages, key=lambda c: c != current)
        try:
            transcript = await self.stt.measured(data, content_type, languages)
        except AudioError as e:
            raise _Unusable(f"unreadable audio: {e}", retry=False) from e
        except SpeechError as e:  # an outage: worth saying again; bad audio: not
            raise _Unusable(f"speech-to-text failed: {e}", retry=e.transient) from e
        if not transcript.text.strip():
            raise _Unusable("no speech heard", retry=True)
        if transcript.confidence < s.min_confidence:
            # the words are doubtful, the language usually is not: answer in it
            heard.update(
                transcript=transcript.text,
                confidence=transcript.confidence,
                language=transcript.language or "",
                language_confidence=transcript.language_confidence,
            )
            raise _Unusable(f"low confidence {transcript.confidence:.2f}", retry=True)
        return transcript


class _Heard:
    """What is known of a voice note so far (kept when it turns out unusable)."""

    def __init__(self, voice: VoiceIn) -> None:
        self.voice = voice

    def update(self, **values: Any) -> None:
        self.voice = replace(self.voice, **values)


class _Unusable(Exception):
    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason, self.retry = reason, retry


# "text only please", "solo texto", "só texto", "no voice notes", "sin audios"...
_TEXT_ONLY = re.compile(
    r"^(?:please\s+|por favor\s+)?(?:"
    r"(?:(?:reply|answer|write|respond)\s+(?:me\s+)?(?:in|with|by)\s+)?(?:text|texts|writing)"
    r"(?:\s+only)?|only\s+text|no\s+(?:more\s+)?(?:voice(?:\s+notes?|\s+messages?)?|audios?)"
    r"|(?:solo|sólo|só|somente|apenas)\s+(?:por\s+)?(?:texto|escrito)"
    r"|(?:sin|sem)\s+(?:audios?|áudios?|notas de voz)|no\s+(?:me\s+)?(?:mandes|envíes|envies)"
    r"\s+audios?|(?:responde|escribe|escreve|responda)(?:me)?\s+(?:por|em|en|com)\s+(?:texto|escrito)"
    r")(?:,?\s+(?:please|por favor|pls))?\s*[.!]*$",
    re.IGNORECASE,
)
_VOICE = re.compile(
    r"^(?:please\s+|por favor\s+)?(?:"
    r"(?:reply|answer|respond|talk)\s+(?:to me\s+)?(?:with|in|by)\s+(?:voice|audio)(?:\s+notes?)?"
    r"|voice\s+(?:notes?|replies|messages)\s+(?:again|please|ok)|audio\s+(?:again|please)"
    r"|(?:responde|contesta|responda)(?:me)?\s+(?:con|com|por|em)\s+(?:audio|áudio|voz)"
    r"|(?:manda|mándame|mandame|envía|envia)(?:me)?\s+(?:un\s+|um\s+)?(?:audio|áudio|audios|áudios)"
    r")(?:,?\s+(?:please|por favor|pls))?\s*[.!]*$",
    re.IGNORECASE,
)


def requested_mode(text: str) -> str | None:
    """ "text" or "voice" when the message asks for that kind of reply."""
    cleaned = strip_accents(" ".join(text.strip().lower().split()))
    if len(cleaned) > 60:
        return None
    if _TEXT_ONLY.match(cleaned):
        return "text"
    if _VOICE.match(cleaned):
        return "voice"
    return None


class ReplyMode:
    def __init__(self, store: LanguageStore) -> None:
        self.store = store

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        msg = ctx.inbound
        mode = requested_mode(msg.text) if msg.text and not msg.button_payload else None
        if mode is None:
            return ctx
        await self.store.set_preference(msg.conversation_id, REPLY_MODE, mode)
        intent = "reply_text_only" if mode == "text" else "reply_with_voice"
        new = replace(
            msg, text=trigger(intent), metadata={**msg.metadata, "original_text": msg.text}
        )
        return replace(ctx, inbound=new)


class Speak:
    def __init__(
        self,
        tts: TextToSpeech | None,
        settings: VoiceSettings,
        host: MediaHost,
        store: LanguageStore,
        voices: dict[str, str],
    ) -> None:
        self.tts, self.settings, self.host, self.store = tts, settings, host, store
        self.voices = voices

    async def __call__(self, ctx: TurnContext) -> TurnContext:
        if ctx.voice_in is None or self.tts is None or self.settings.reply_mode == "text":
            return ctx
        if await self.store.preference(ctx.inbound.conversation_id, REPLY_MODE) == "text":
            return ctx
        text = "\n".join(r.text for r in ctx.replies if r.text).strip()
        if not text:
            return ctx
        language = ctx.language or "en"
        try:
            speech = await self.tts.measured(text, language, self.voices.get(language, ""))
            audio = await self._host(ctx, speech.audio, speech.content_type)
        except (SpeechError, MediaError) as e:
            logger.warning("voice reply not made (%s); replying in text", e)
            return ctx
        if not audio:
            return ctx
        voice = BotReply(audio=audio)
        replies = list(ctx.replies)
        if self.settings.reply_mode == "voice":
            replies = [r for r in replies if r.buttons or r.image or r.attachment or r.custom]
        spoken = VoiceOut(engine=speech.engine, voice=speech.voice)
        return replace(ctx, replies=(voice, *replies), voice_out=spoken)

    async def _host(self, ctx: TurnContext, data: bytes, content_type: str) -> str:
        """A URL the provider can fetch, or an uploaded media id (``media:<id>``)."""
        upload = self.settings.whatsapp_upload or not self.host.public
        if upload:
            try:
                return "media:" + await ctx.output.upload_media(data, content_type)
            except MediaError as e:
                if not self.host.public:
                    logger.warning(
                        "no public URL (HABLA_PUBLIC_URL) and %s: voice reply not sent", e
                    )
                    return ""
        return await self.host.put(data, content_type)
