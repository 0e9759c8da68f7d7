"""What the built-in actions use, handed to them by the server.

An action that declares ``commerce: Commerce | None = None`` (as :class:`UsesCommerce`
does) gets the server's (or engine worker's) Commerce service set on it when the
in-process executor registers it (``nlu/actions.py``, built in ``habla/wiring.py``).
Under an external action server (``rasa run actions``, ``HABLA_ACTION_ENDPOINT``)
nothing is injected: the action server builds its own from the same settings, once.
"""

from __future__ import annotations

import asyncio

from commerce.service import Commerce

_standalone: Commerce | None = None
_building = asyncio.Lock()


class UsesCommerce:
    commerce: Commerce | None = None  # injected by the server (habla/wiring.py)

    async def service(self) -> Commerce:
        if self.commerce is None:
            self.commerce = await standalone_commerce()
        return self.commerce


async def standalone_commerce() -> Commerce:
    """The Commerce of an external action server process, built on first use."""
    global _standalone
    async with _building:
        if _standalone is None:
            from habla.wiring import build_commerce, database, start_commerce
            from runtime.settings import load_settings

            settings = load_settings()
            db = database(settings)
            _standalone = await start_commerce(build_commerce(settings, db), settings, db)
    return _standalone
