"""The channel seam: a channel turns provider webhooks into inbound messages and
bot replies into provider messages.

Channels are registered by the name used in webhook paths and settings
(``/webhooks/<name>/...``), the names Rasa authors know. A channel whose secret is not
configured still answers its paths, with 403 to every request: fail closed.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

from runtime.calls import CallLog
from runtime.errors import MediaError, PermanentError, is_transient_status
from runtime.messages import InboundMessage
from runtime.output import OutputChannel as OutputChannel  # the turn's seam, re-exported
from runtime.settings import Settings
from runtime.speech import CallSpeech
from runtime.turn import TurnContext

logger = logging.getLogger(__name__)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
) -> tuple[bytes, str]:
    """GET ``url`` (following redirects) into memory, refusing more than ``max_bytes``.

    Returns the bytes and the content type the server declared.
    """
    try:
        async with session.get(
            url,
            headers=headers,
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status >= 400:
                raise MediaError(
                    f"media download answered {resp.status}",
                    transient=is_transient_status(resp.status),
                )
            declared = resp.content_length
            if declared is not None and declared > max_bytes:
                raise MediaError(f"media is {declared} bytes (limit {max_bytes})")
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise MediaError(f"media is over {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks), resp.headers.get("Content-Type", "")
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise MediaError(f"media download failed: {type(e).__name__}", transient=True) from e


async def _no_events(conversation_id: str) -> list[dict[str, Any]]:
    return []


async def _no_language(conversation_id: str, language: str) -> None:
    raise PermanentError("this server keeps no conversation languages")


@dataclass(frozen=True)
class ChannelServices:
    """What a channel needs from the runtime, injected (no global lookups)."""

    settings: Settings
    accept: Callable[[InboundMessage, OutputChannel], Awaitable[bool]]
    """Record and queue a message for background processing; False if a duplicate."""
    delivery_status: Callable[[str, str, str, str], Awaitable[bool]]
    """Store a provider's delivery status report (id, status, error code, error)."""
    conversation_id: Callable[[str, str], str]
    """The conversation key for a channel and a sender's address (E.164 or id)."""
    last_inbound: Callable[[str, str], Awaitable[float | None]]
    """When a conversation last wrote on a channel (epoch seconds), if known."""
    converse: Callable[[InboundMessage, OutputChannel], Awaitable[TurnContext]]
    """Run a whole turn now and return its context (replies, language, failure), for
    channels that answer in the response (REST, calls)."""
    language: Callable[[str], Awaitable[str | None]]
    """A conversation's current language, if it has one."""
    responses: Callable[[str], dict[str, str]]
    """A domain response's text per language ("" for the unconditioned one)."""
    calls: CallLog
    """The record of phone calls (runtime/calls.py)."""
    call_speech: Callable[[], CallSpeech | None]
    """Speech for streamed calls (None while speech-to-text or text-to-speech is off)."""
    events: Callable[[str], Awaitable[list[dict[str, Any]]]] = _no_events
    """A conversation's events as Rasa dicts (the inspector reads a turn from them)."""
    set_language: Callable[[str, str], Awaitable[None]] = _no_language
    """Set a conversation's language, sticky (as if the user had asked for it)."""


class InputChannel(ABC):
    name: ClassVar[str]
    paths: ClassVar[tuple[str, ...]] = ("webhook",)
    """Paths under ``/webhooks/<name>/`` the channel answers."""
    output: OutputChannel | None = None
    """Where replies go for messages processed in the background (and on resume)."""

    def __init__(self, services: ChannelServices) -> None:
        self.services = services
        self.settings = services.settings

    @classmethod
    def from_settings(cls, services: ChannelServices) -> InputChannel:
        """Build from the settings in ``services`` (registered in runtime/providers.py)."""
        return cls(services)

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        """Environment variables that must be set before the channel accepts requests."""
        return []

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The channel's aiohttp routes (every path in ``paths``)."""

    async def start(self) -> None:
        if self.output is not None:
            await self.output.start()

    async def close(self) -> None:
        if self.output is not None:
            await self.output.close()

    @classmethod
    def url_paths(cls) -> list[str]:
        return [f"/webhooks/{cls.name}/{p}" for p in cls.paths]

    @classmethod
    def closed_routes(cls) -> list[web.RouteDef]:
        async def forbidden(request: web.Request) -> web.Response:
            return web.Response(status=403, text=f"channel '{cls.name}' is not configured")

        return [web.route("*", path, forbidden) for path in cls.url_paths()]


def public_request_url(request: web.Request, public_base: str) -> str:
    """The URL the provider called, which it signed (behind a proxy: the public one)."""
    if public_base:
        return public_base + request.path_qs
    return str(request.url)
