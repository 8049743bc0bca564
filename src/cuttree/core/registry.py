"""The one registry type behind every extension point: criteria, op rules, module rules, layer
rules, datasets.

A :class:`Registry` is a dict with three additions: :meth:`~Registry.register` warns when a key
is replaced (two plugins fighting over one name must not pass silently), :meth:`~Registry.names`
lists the keys as text (for :class:`cuttree.Config` and "did you mean"), and
:meth:`~Registry.overlay` adds or replaces entries for one block of code and restores the table
afterwards, so a user's own rule applies to one call without touching anyone else's.

>>> sizes = Registry("size")
>>> sizes.register("small", 1)
>>> with sizes.overlay({"small": 2, "large": 9}):
...     sizes["small"], sizes.names()
(2, ['large', 'small'])
>>> sizes["small"], sizes.names()
(1, ['small'])
>>> sizes.lookup("smal")
Traceback (most recent call last):
KeyError: "unknown size 'smal' — did you mean 'small'? (registered: small)"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from cuttree.errors import CuttreeWarning, did_you_mean

K = TypeVar("K")
V = TypeVar("V")


def key_name(key: object) -> str:
    """A key as text: a class by its qualified name, anything else by ``str``."""
    return f"{key.__module__}.{key.__qualname__}" if isinstance(key, type) else str(key)


class Registry(dict[K, V], Generic[K, V]):
    """A named table of extension rules (``what`` names one entry in messages: "criterion")."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, key: K, value: V, *, by: str = "") -> None:
        """Add ``key``; replacing a different value warns (``by``: who replaces it, for the message)."""
        old = self.get(key)
        if key in self and old is not value:
            warnings.warn(
                f"{self.what} {key_name(key)!r} replaced{' by ' + by if by else ''}", CuttreeWarning, stacklevel=3
            )
        self[key] = value

    def decorator(self, *keys: K, make: Callable[[Any], V] | None = None) -> Callable[[Any], Any]:
        """A decorator registering the decorated object (or ``make(obj)``) under every key; returns the object."""

        def deco(obj: Any) -> Any:
            value = make(obj) if make is not None else obj
            for k in keys:
                self.register(k, value, by=getattr(obj, "__qualname__", ""))
            return obj

        return deco

    def names(self) -> list[str]:
        """The keys as sorted text."""
        return sorted(key_name(k) for k in self)

    def lookup(self, key: K) -> V:
        """``self[key]``, or a ``KeyError`` that names the near misses and what is registered."""
        if key in self:
            return self[key]
        hint = did_you_mean(str(key), self.names())
        raise KeyError(f"unknown {self.what} {key_name(key)!r}{hint} (registered: {', '.join(self.names())})")

    @contextmanager
    def overlay(self, entries: Mapping[K, V]) -> Iterator[Registry[K, V]]:
        """Within the block, ``entries`` are added (or replace, silently) what is registered."""
        saved = {k: self[k] for k in entries if k in self}
        self.update(entries)
        try:
            yield self
        finally:
            for k in entries:
                if k in saved:
                    self[k] = saved[k]
                else:
                    self.pop(k, None)
