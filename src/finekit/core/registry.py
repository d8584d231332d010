"""Name -> implementation registries (tasks, methods, model families), peft-style.

A new task or method is one module that calls `register(...)` once at import time and one
line in `finekit.plugins.BUILTIN` (or an entry point); the recipe finds it by name. Lookups
load the plug-ins first, so no caller has to import a task or method module itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from finekit.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small ordered name -> object map with an error that lists what exists."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        _load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        _load_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        _load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        _load_plugins()
        return iter(list(self._items))


def _load_plugins() -> None:
    from finekit.plugins import load_plugins  # imports plug-ins by name (importlib) only

    load_plugins()
