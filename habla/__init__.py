"""The composition root: settings in, a running habla out (server, CLI, engine workers).

Nothing below this package imports it: ``runtime/`` is the core, ``channels/``,
``i18n/``, ``voice/``, ``commerce/`` and ``nlu/`` are adapters over it, and
``habla/wiring.py`` is the one place that builds them from the settings.
"""
