"""One registry per extension point (targets, exporters, latency probes, calibrators, models)."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from edgecompress.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. Unknown names raise a UserError with the valid names and a close match."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}   # name -> the module that registers it, imported on first get

    def register_from(self, name: str, module: str) -> None:
        """`name` is registered by `module`, imported when `name` is first asked for (a process that
        never asks does not import it)."""
        self._modules[name] = module

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
        if name not in self._items and name in self._modules:
            importlib.import_module(self._modules[name])
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}", self.suggest(name))
        return self._items[name]

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        valid = ", ".join(self.names())
        return (f"did you mean {close[0]!r}? " if close else "") + f"valid: {valid}"

    def names(self) -> list[str]:
        return sorted({*self._items, *self._modules})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def lazy_exports(package: str, names: list[str], module: str = "catalog") -> Callable[[str], object]:
    """A package's `__getattr__` (PEP 562) serving `names` from `package.module`, imported on first
    use: a process that only runs an engine (a timing worker, a user's `edgecompress.load`) imports
    `targets.deploy` and `exporters.common` without PyTorch (a fresh interpreter ready in 0.4 s, not 2.4 s)."""
    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)
    return __getattr__
