"""The run directory: one manifest, atomic artifacts, and a lock so one run owns it at a time.

A stage writes its files into a private staging folder; `RunDir.finish_stage` moves each file into
place with `os.replace` (atomic on one file system), records its sha256, and only then rewrites the
manifest (itself atomically) with the stage marked finished. A run killed at any point therefore
leaves either the old manifest or the new one, never a stage that claims files it does not have.
On `--resume` every finished stage's files are hashed again; a changed or truncated file makes
that stage (and every later one) run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from edgecompress import __version__
from edgecompress.errors import UserError
from edgecompress.util import atomic_write, write_json  # noqa: F401 (re-exported: tests and stages use them from here)
from edgecompress.util import disk_error as _disk_error, fsync_dir as _fsync_dir, inside

MANIFEST = "manifest.json"
CHECKPOINTS = ".checkpoints"   # work in progress a stage resumes from (the search state)
LOCK = ".lock"
SCHEMA = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def process_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot), so a reused pid is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or process_start(pid) in (None, start)


class RunLock:
    """`<run>/.lock` holding the owner's pid; a lock whose process is gone is stale and taken over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_owner()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(f"could not take the lock {self.path}", "another compress run may be starting on it")

    def _check_owner(self) -> None:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            owner = {}  # a lock torn by a kill while it was being written
        pid = owner.get("pid")
        same_host = owner.get("host", socket.gethostname()) == socket.gethostname()
        if isinstance(pid, int) and pid != os.getpid() and (not same_host or process_alive(pid, owner.get("start"))):
            raise UserError(f"another compress run (pid {pid} on {owner.get('host', '?')}) is using "
                            f"{self.path.parent}", "wait for it to finish, or choose another --out")
        self.path.unlink(missing_ok=True)  # stale: its process was killed

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class RunDir:
    """A run directory and its manifest. Use `RunDir.open(...)` as a context manager."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.lock = RunLock(self.path / LOCK)
        self.notes: list[str] = []

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, resume: bool, inputs: dict[str, Any]) -> "RunDir":
        """Create or reopen a run directory and take its lock.

        `inputs` identifies what the run was asked to do (flags, hashes of model/weights); a resumed
        run with different inputs is refused rather than mixing two runs' artifacts.
        """
        path = Path(path)
        _prepare_dir(path)
        existing = _read_manifest(path)
        if existing is None and any(p.name != LOCK for p in path.iterdir()) and not resume:
            raise UserError(f"{path} is not empty and holds no compress run",
                            "choose a new or empty --out")
        rd = cls(path, existing or _new_manifest(inputs))
        rd.lock.acquire()
        try:
            rd._check_reuse(existing, resume=resume, inputs=inputs)
            if existing is None:
                rd.save_manifest()
        except BaseException:
            rd.lock.release()
            raise
        return rd

    def _check_reuse(self, existing: dict | None, *, resume: bool, inputs: dict) -> None:
        if existing is None:
            return
        if not resume:
            state = "a finished run" if existing.get("finished") else "an unfinished run"
            raise UserError(f"{self.path} already holds {state}",
                            "add --resume to continue it, or choose another --out")
        if existing.get("inputs") != inputs:
            changed = sorted(k for k in set(inputs) | set(existing.get("inputs", {}))
                             if inputs.get(k) != existing.get("inputs", {}).get(k))
            raise UserError(f"--resume with different inputs than the run in {self.path} "
                            f"(changed: {', '.join(changed)})",
                            "repeat the original command with --resume, or choose another --out")

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        shutil.rmtree(self.path / ".staging", ignore_errors=True)

    # -- manifest ----------------------------------------------------------------------------
    def save_manifest(self) -> None:
        self.manifest["updated"] = time.time()
        write_json(self.path / MANIFEST, self.manifest)

    def stage_record(self, name: str) -> dict | None:
        return self.manifest["stages"].get(name)

    def stage_done(self, name: str) -> bool:
        """Finished in the manifest and every recorded file still has its recorded hash."""
        record = self.stage_record(name)
        if not record or not record.get("finished"):
            return False
        for art in record["artifacts"].values():
            file = self._recorded(art["path"])
            if not file.is_file() or file.stat().st_size != art["size"] or sha256_file(file) != art["sha256"]:
                self.notes.append(f"{art['path']} changed since stage {name} finished; stage {name} is redone")
                return False
        return True

    def invalidate_from(self, names: list[str]) -> None:
        """Forget these stages (a stage before them is being redone, so their inputs change)."""
        dropped = [n for n in names if n in self.manifest["stages"]]
        for n in dropped:
            del self.manifest["stages"][n]
        self.manifest["finished"] = False
        if dropped:
            self.save_manifest()

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh private folder for a stage's files; whatever a killed stage left there is discarded."""
        folder = self.path / ".staging" / name
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise _disk_error(exc, folder) from exc
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def finish_stage(self, name: str, *, staged: Path, files: dict[str, str], data: dict, seconds: float) -> None:
        """Move staged files (artifact name -> path relative to `staged`) into place, then mark done."""
        artifacts, placed, where = {}, [], self.path / MANIFEST
        try:
            for art_name, rel in files.items():
                src, dst = staged / rel, self.path / rel
                where = dst
                digest = sha256_file(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_file() and sha256_file(dst) == digest:
                    src.unlink()  # a byte-identical copy of an earlier stage's file (an engine that is the ONNX)
                else:
                    with open(src, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(src, dst)
                    placed.append(dst)
                artifacts[art_name] = {"path": rel, "sha256": digest, "size": dst.stat().st_size}
            _fsync_dir(self.path)
            self.manifest["stages"][name] = {"finished": True, "artifacts": artifacts, "data": data,
                                             "seconds": round(seconds, 3), "at": time.time()}
            self.save_manifest()
        except (OSError, UserError) as exc:   # the manifest's own write fails as a UserError
            # The manifest does not say this stage finished: its files must not stand under their
            # final names either (a resume redoes the stage).
            self.manifest["stages"].pop(name, None)
            for path in placed:
                path.unlink(missing_ok=True)
            if isinstance(exc, UserError):
                raise
            raise _disk_error(exc, where) from exc

    def mark_finished(self) -> None:
        self.manifest["finished"] = True
        self.save_manifest()

    def artifact(self, stage: str, name: str) -> Path:
        return self._recorded(self.manifest["stages"][stage]["artifacts"][name]["path"])

    def _recorded(self, rel: Any) -> Path:
        """A path the manifest records, kept inside the run directory (the manifest is a file
        anyone may edit: an absolute path or `..` would make --resume read someone else's file)."""
        return inside(self.path, rel, self.path / MANIFEST, "choose another --out; this run cannot be resumed")

    def load_model(self, stage: str, name: str) -> nn.Module:
        """A whole PyTorch module a finished stage saved (torch.save(model)), in eval mode.

        Loaded with `weights_only=True`: the run directory is just files (its sha256 manifest sits
        beside them and is as easy to rewrite), so a planted pickle must not run code on --resume.
        The unpickler may build only the module classes this process has already imported (the
        user's model, torch.nn, edgecompress); anything else named in the file is refused."""
        path = self.artifact(stage, name)
        allowed = _module_classes(path)
        with torch.serialization.safe_globals(allowed):
            try:
                model = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:   # pickle.UnpicklingError (a refused global), a damaged zip
                raise UserError(f"cannot load {path} safely: {_refusal(exc)}",
                                "delete the run directory and start again; it holds a file this run did not write") from exc
        if not isinstance(model, nn.Module):
            raise UserError(f"{path} holds a {type(model).__name__}, not a PyTorch module",
                            "delete the run directory and start again; it holds a file this run did not write")
        return model.eval()

    # -- checkpoints: a stage's work in progress, beside the manifest's finished stages ----------
    def checkpoint_path(self, name: str) -> Path:
        return self.path / CHECKPOINTS / f"{name}.json"

    def save_checkpoint(self, name: str, state: dict) -> None:
        path = self.checkpoint_path(name)
        path.parent.mkdir(exist_ok=True)
        write_json(path, state)

    def load_checkpoint(self, name: str) -> dict | None:
        path = self.checkpoint_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def artifacts(self) -> dict[str, str]:
        """Every artifact of every finished stage: name -> path relative to the run directory."""
        out = {}
        for record in self.manifest["stages"].values():
            out.update({k: v["path"] for k, v in record.get("artifacts", {}).items()})
        return out


def _module_classes(path: Path) -> list[type]:
    """The globals `path` names that are nn.Module subclasses of already imported modules. Nothing
    is imported here: importing a module the file names would itself run code."""
    import sys
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise UserError(f"cannot load {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        "delete the damaged file and run again with --resume") from exc
    out = []
    for name in names:
        obj = _imported(name, sys.modules)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            out.append(obj)
    return out


def _refusal(exc: Exception) -> str:
    """Why torch's weights-only unpickler refused, without its advice to load the file unsafely."""
    import re
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"it names {found.group(1)}, which is not a module class of this run"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _imported(qualified: str, modules: dict) -> Any:
    """`qualified` ("pkg.mod.Class") looked up in already imported modules only; None if absent."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj = modules.get(".".join(parts[:cut]))
        if obj is None:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def check_writable(path: Path) -> None:
    """Fail fast, before any work, when `path` cannot become a writable directory."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == Path(path).absolute() and probe.is_dir():
        ok = os.access(probe, os.W_OK | os.X_OK)
    else:
        ok = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    if not ok:
        why = "not a directory" if not probe.is_dir() else "permission denied"
        raise UserError(f"--out {path} is not writable ({why}: {probe})", "choose a directory you can write to")


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"--out {path} is not writable ({exc.strerror or exc})",
                        "choose a directory you can write to") from exc
    if not path.is_dir():
        raise UserError(f"--out {path} is not a directory", "choose a directory path")


def _read_manifest(path: Path) -> dict | None:
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is unreadable ({exc})", "choose another --out; this run cannot be resumed") from exc
    if manifest.get("schema") != SCHEMA or "stages" not in manifest:
        raise UserError(f"{file} is not a compress manifest of schema {SCHEMA}", "choose another --out")
    return manifest


def _new_manifest(inputs: dict) -> dict:
    import platform

    import torch
    return {"schema": SCHEMA, "finished": False, "created": time.time(), "inputs": inputs,
            "versions": {"edgecompress": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "stages": {}}
