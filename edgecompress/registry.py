"""One registry per extension point (targets, exporters, latency probes, calibrators, models)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from edgecompress.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. Unknown names raise a UserError with the valid names and a close match."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return add

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}", self.suggest(name))
        return self._items[name]

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=1)
        valid = ", ".join(sorted(self._items))
        return (f"did you mean {close[0]!r}? " if close else "") + f"valid: {valid}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
