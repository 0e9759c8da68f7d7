"""Channels, registered by the name used in webhook paths and in settings."""

from __future__ import annotations

import importlib

from channels.base import ChannelServices, InputChannel, OutputChannel
from channels.rest import RestChannel
from channels.twilio import TwilioChannel
from channels.whatsapp import WhatsAppChannel

CHANNELS: dict[str, type[InputChannel]] = {
    c.name: c for c in (RestChannel, TwilioChannel, WhatsAppChannel)
}


def channel_class(name: str) -> type[InputChannel]:
    """A built-in channel by name, or a custom one by dotted path (``pkg.mod.Class``)."""
    if name in CHANNELS:
        return CHANNELS[name]
    if "." not in name:
        raise KeyError(f"unknown channel '{name}'; built-in: {', '.join(sorted(CHANNELS))}")
    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, InputChannel)):
        raise TypeError(f"{name} is not an InputChannel")
    return cls


__all__ = ["CHANNELS", "ChannelServices", "InputChannel", "OutputChannel", "channel_class"]
