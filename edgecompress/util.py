"""Low-level helpers any package may use: atomic file writes, lazy imports of heavy backends, and
the name of this machine's device. Imports only the standard library and errors.py, so profiles,
exporters, targets, pipeline, report and check can all use it without an import circle."""
from __future__ import annotations

import errno
import importlib
import json
import os
import platform
import tempfile
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Callable

from edgecompress.errors import MissingBackendError, UserError


# ---------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a unique temporary name next to `path`, fsync it, then rename it to
    `path`: a reader sees the old file or the new one, never half of one. A unique name (not
    `.name.tmp`), so two writers never share a temporary."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared like any output
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (tmpfs on old kernels) refuse fsync on directories
    finally:
        os.close(fd)


def disk_error(exc: OSError, path: Path) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(f"no space left on the device while writing {path}",
                         "free some disk space, then run again with --resume")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {exc.strerror}", "choose a writable --out")
    return UserError(f"cannot write {path}: {exc.strerror or exc}", "check the disk, then run again with --resume")


def inside(root: Path, rel: Any, source: Path, hint: str) -> Path:
    """`root / rel` for a path read from a run file (`source`): refused with a one-line UserError
    when it is absolute, holds `..`, or leads out of `root` through a link."""
    if not isinstance(rel, str) or not rel:
        raise UserError(f"{source}: path {rel!r} is not a file name", hint)
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise UserError(f"{source}: path {rel!r} leaves the run directory", "a run names only files inside it; " + hint)
    path = Path(root) / pure
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise UserError(f"{source}: path {rel!r} leads out of the run directory (a link)", hint)
    return path


# ---------------------------------------------------------------- lazy imports


def need(module: str, extra: str) -> ModuleType:
    """Import a heavy backend inside the function that uses it (`import edgecompress` stays light);
    a missing one is a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(module.split(".")[0], extra) from e


# ---------------------------------------------------------------- device


def describe_device() -> str:
    """This machine's CPU as the local latency probes name it: "<model name> (local)". A check
    compares it (and the host name) with what the run's probe recorded to know it is on the same
    device."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} (local)"
    except OSError:
        pass
    return f"{platform.machine()} (local)"


def host_name() -> str:
    return platform.node()
