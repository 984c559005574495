"""Errors that say whose fault it is.

`UserError` is a mistake in what the user gave us (config, model, data, target); the CLI prints
its one-line cause and hint and exits 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(EdgeCompressError):
    """Bad input: printed as one line with a hint, exit code 2, no traceback."""

    def __init__(self, cause: str, hint: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.cause} (hint: {self.hint})" if self.hint else self.cause

    def __reduce__(self):
        # Exception pickles only `args` (the cause): the hint would be lost on its way back from a
        # worker process (multiprocessing, a process pool)
        return type(self), (self.cause, self.hint)


class MissingBackendError(UserError):
    """An optional runtime is not installed; names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed",
                         f"pip install 'edgecompress[{extra}]'")
        self.package, self.extra = package, extra

    def __reduce__(self):
        return type(self), (self.package, self.extra)


class InternalError(EdgeCompressError):
    """A bug in edgecompress: an invariant broke. Keeps its traceback."""
