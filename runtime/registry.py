"""One registry mechanism for every provider family.

A :class:`Registry` maps the name used in settings (``HABLA_STT=whisper``) to the
class that implements it, written as ``"module:Class"`` so nothing is imported until
a provider is chosen (an unused cloud SDK costs nothing at start-up, and this core
module imports none of the adapters). A value with a dot that is not a built-in name
is a custom class by dotted path (``mycompany.speech.MySTT``), as Rasa does for
channels. Each class builds itself from the settings with ``from_settings`` (Rasa's
``from_credentials``); the composition root (``habla/wiring.py``) calls it.

The settings' allowed values come from the registries (``choices=STT``), so a new
provider is one new file plus one line in ``runtime/providers.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class UnknownProvider(LookupError):
    pass


class Registry:
    """Providers of one family, by the name used in settings."""

    def __init__(self, family: str, builtins: dict[str, str], *, off: tuple[str, ...] = ()) -> None:
        """``builtins``: name → ``"module:Class"``; ``off``: values that choose no
        provider at all (``""``, ``"off"``)."""
        self.family = family
        self._paths = dict(builtins)
        self.off = off
        self._loaded: dict[str, Any] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Built-in provider names, in registration order."""
        return tuple(self._paths)

    @property
    def choices(self) -> tuple[str, ...]:
        """Every value settings accept besides a dotted path."""
        return (*self.off, *self._paths)

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def register(self, name: str, path: str) -> None:
        """Add (or replace) a provider: ``register("acme", "acme.stt:AcmeSTT")``."""
        self._paths[name] = path
        self._loaded.pop(name, None)

    def allows(self, value: str) -> bool:
        return value in self.off or value in self._paths or _is_dotted(value)

    def describe(self) -> str:
        """The accepted values, for error messages and the settings table."""
        shown = [repr(v) if v == "" else v for v in self.choices]
        return ", ".join(shown) + ", or a dotted path to a custom class"

    def load(self, name: str, base: type[T] | None = None) -> type[T]:
        """The class registered as ``name`` (or at the dotted path ``name``)."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._paths:
            module, _, attr = self._paths[name].partition(":")
        elif _is_dotted(name):
            module, _, attr = name.rpartition(".")
        else:
            raise UnknownProvider(
                f"unknown {self.family} '{name}'; built-in: {', '.join(self._paths)}"
            )
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UnknownProvider(f"{self.family} '{name}' cannot be loaded: {e}") from e
        if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
            raise UnknownProvider(f"{self.family} '{name}' is not a {base.__name__}")
        self._loaded[name] = cls
        return cls

    def is_off(self, value: str) -> bool:
        return value in self.off


def _is_dotted(value: str) -> bool:
    parts = value.split(".")
    return len(parts) >= 2 and all(p.isidentifier() for p in parts)
