"""Where a turn's replies go: the one interface the turn needs from a channel.

Channels (``channels/``) implement it; the turn (``runtime/turn.py``) only calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from runtime.errors import MediaError
from runtime.messages import BotReply, Delivery, InboundMessage, MediaRef


class OutputChannel(ABC):
    """Sends bot replies back to a user.

    The base renders buttons as numbered text, so a channel only overrides what it
    can do better (as Rasa's ``OutputChannel`` does).
    """

    @abstractmethod
    async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
        """Send one reply to the sender of ``msg``; one delivery per provider message."""

    def numbers_choices(self, reply: BotReply) -> bool:
        """Whether this reply's buttons are shown as numbered text (so "2" must map back)."""
        return bool(reply.buttons)

    async def acknowledge(self, msg: InboundMessage) -> None:
        """Tell the provider the message was seen (read receipts); optional."""
        return None

    async def fetch_media(self, media: MediaRef, max_bytes: int) -> tuple[bytes, str]:
        """Download media the user sent: its bytes and content type. Raises MediaError."""
        raise MediaError("this channel does not receive media")

    async def upload_media(self, data: bytes, content_type: str) -> str:
        """Upload generated media to the provider; its media id (if the channel can)."""
        raise MediaError("this channel does not upload media")

    async def start(self) -> None:
        """Open sessions inside the running event loop."""
        return None

    async def close(self) -> None:
        return None

    @staticmethod
    def numbered_text(reply: BotReply) -> str:
        if not reply.buttons:
            return reply.text
        choices = "\n".join(f"{i}. {b.title}" for i, b in enumerate(reply.buttons, 1))
        return f"{reply.text}\n\n{choices}" if reply.text else choices
