"""The small typed values every stage of a turn reads and returns."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class MediaRef:
    """A piece of media the user sent, not yet downloaded.

    Twilio gives a URL; the WhatsApp Cloud API gives a media id (resolved to a URL
    with the access token when it is downloaded).
    """

    url: str = ""
    content_type: str = ""
    media_id: str = ""
    kind: str = ""  # image, video, audio, voice, document, sticker
    caption: str = ""
    filename: str = ""


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    address: str = ""
    label: str = ""


SYSTEM_PREFIX = "habla:"
"""Message ids of events the runtime injects into a conversation (a payment went
through, a delayed payment link is ready): not something the user wrote, so they do
not reopen WhatsApp's customer-service window."""


@dataclass(frozen=True)
class InboundMessage:
    """One message from an end user, as every channel hands it to the turn.

    ``conversation_id`` is the key of the conversation: the sender's E.164 number for
    phone-based channels, so the same person keeps one conversation.
    ``reply_to``/``reply_from`` are the channel's own addresses for the answer.
    """

    channel: str
    conversation_id: str
    message_id: str = ""
    text: str = ""
    sender: str = ""
    reply_to: str = ""
    reply_from: str = ""
    profile_name: str = ""
    media: tuple[MediaRef, ...] = ()
    location: Location | None = None
    button_payload: str = ""
    received_at: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)
    slots: dict[str, Any] = field(default_factory=dict)
    """Slots the runtime sets before Rasa sees the message (if the domain has them)."""
    resumed: bool = False
    """Claimed after its first server stopped: its turn may already have run."""

    @property
    def is_system(self) -> bool:
        return self.message_id.startswith(SYSTEM_PREFIX)

    @property
    def key(self) -> str:
        """The message's identity across redeliveries: its channel and provider id."""
        return f"{self.channel}:{self.message_id}"

    def with_text(self, text: str) -> InboundMessage:
        return replace(self, text=text)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> InboundMessage:
        data = json.loads(raw)
        data["media"] = tuple(MediaRef(**m) for m in data.get("media") or ())
        if data.get("location"):
            data["location"] = Location(**data["location"])
        return cls(**data)


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class BotReply:
    """One message from the bot, channel-neutral."""

    text: str = ""
    buttons: tuple[Button, ...] = ()
    image: str = ""
    attachment: str = ""
    custom: dict[str, Any] | None = None
    audio: str = ""
    """A voice note: a URL the provider fetches, or ``media:<id>`` once uploaded."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BotReply:
        buttons = tuple(Button(**b) for b in data.get("buttons") or ())
        return cls(**{**data, "buttons": buttons})

    @classmethod
    def from_rasa(cls, message: dict[str, Any]) -> BotReply:
        """Build from a message collected by Rasa's ``CollectingOutputChannel``."""
        buttons = tuple(
            Button(title=str(b.get("title", "")), payload=str(b.get("payload", "")))
            for b in message.get("buttons") or ()
        )
        attachment = message.get("attachment")
        return cls(
            text=message.get("text") or "",
            buttons=buttons,
            image=message.get("image") or "",
            attachment=attachment if isinstance(attachment, str) else "",
            custom=message.get("custom"),
        )

    def to_rasa(self, recipient_id: str) -> dict[str, Any]:
        """The JSON Rasa's REST channel returns for this message."""
        out: dict[str, Any] = {"recipient_id": recipient_id}
        if self.text:
            out["text"] = self.text
        if self.buttons:
            out["buttons"] = [{"title": b.title, "payload": b.payload} for b in self.buttons]
        if self.image:
            out["image"] = self.image
        if self.attachment:
            out["attachment"] = self.attachment
        if self.custom is not None:
            out["custom"] = self.custom
        if self.audio:
            out["audio"] = self.audio
        return out


@dataclass(frozen=True)
class Delivery:
    """What happened to one outbound message."""

    ok: bool
    provider_id: str = ""
    error: str = ""
    attempts: int = 1
    transient: bool = False
    """Not sent, but trying again later can help (the provider was down or busy)."""


def mask_phone(value: str) -> str:
    """Mask a phone number (or whatsapp:+E164 address) for logs: +34*****678."""
    if not value:
        return value
    prefix = ""
    if ":" in value:
        prefix, value = value.split(":", 1)
        prefix += ":"
    digits = sum(c.isdigit() for c in value)
    if digits < 6:
        return prefix + "*" * len(value)
    keep_head = 3 if value.startswith("+") else 2
    return prefix + value[:keep_head] + "*" * (len(value) - keep_head - 3) + value[-3:]
