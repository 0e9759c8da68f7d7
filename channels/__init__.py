"""Channels: the webhook in (``InputChannel``), the answer out (``OutputChannel``).

Registered by the name used in webhook paths and ``HABLA_CHANNELS`` in
``runtime/providers.py`` (CHANNELS); a dotted path loads a custom channel class.
"""

from __future__ import annotations

from channels.base import ChannelServices, InputChannel, OutputChannel

__all__ = ["ChannelServices", "InputChannel", "OutputChannel"]
