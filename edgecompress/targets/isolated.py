"""Engines timed each in a process of its own, as a user's application runs one.

The run's own process is no place to time an engine: after training it holds PyTorch's thread
pools, DataLoader workers and every engine it built, and ratios it measured there differed from
those of a fresh process per engine by -8 to +9 % (docs/benchmarks.md, "user_view"). So every
local timing goes through a host process started before the run loads any runtime (`start_host`,
called first by the runner and by `compress check`): a fresh interpreter that imports the one
loader and runs nothing else; it forks one worker per engine, each opening its engine with `open_engine` and
its settings, as the user's code does. The protocol (timing.compare) still interleaves blocks and
pairs ratios; each block's calls run inside the engine's worker and are timed there, so the pipes
stay outside the clock. Workers are kept (least recently used first out) while their engine file
is unchanged: the original's engine is the reference of every probe.

Why a host started early rather than a process per comparison: starting processes from a run
that had used OpenVINO and DataLoader workers crashed it (SIGSEGV in waitpid, vfork on or off).
Why a plain subprocess rather than a multiprocessing child: multiprocessing joins its children at
exit, and the exit hook that stopped the host first crashed the interpreter after OpenVINO and
DataLoader workers had run (SIGSEGV in the atexit call); the host needs no hook, it ends when its
socket to this process closes, however this process ends.

    calls = isolated_calls({"a": (path, "openvino", settings, 1), "b": ...})
    timing = compare(calls, reference="a")
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

from edgecompress.errors import UserError

READY = "ready"
MAX_WORKERS = 12           # engines kept open in the host; a probe's engines are used once
START_TIMEOUT_S = 300      # the host imports the loader (PyTorch included) before it answers

_lock = threading.Lock()
_host: Host | None = None


class Host:
    """The parent's end of the host process: a fresh interpreter (never a fork of the run) that
    ends when this process's end of the socket closes, however this process ends."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from edgecompress.targets.isolated import serve_host; serve_host({theirs.fileno()})"],
            pass_fds=[theirs.fileno()], cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": _package_root()})
        theirs.close()
        self._conn = Connection(ours.detach())

    def alive(self) -> bool:
        return self.process.poll() is None

    def ask(self, *message):
        if not self.alive():
            raise UserError("the timing host process has ended", "re-run; if it repeats, report it")
        self._conn.send(message)
        if not self._conn.poll(START_TIMEOUT_S):
            raise UserError(f"the timing host did not answer in {START_TIMEOUT_S} s", "re-run on a quieter machine")
        reply = self._conn.recv()
        if isinstance(reply, str) and reply.startswith("error: "):
            raise UserError(f"could not open an engine in its own process: {reply[7:]}", "see the engine's error")
        return reply


def start_host() -> Host:
    """The one host of this process, started now if it is not running (call it before any runtime
    or DataLoader worker starts in this process)."""
    global _host
    with _lock:
        if _host is None or not _host.alive():
            _host = Host()
        return _host


class IsolatedEngine:
    """A zero-argument call (one inference) of an engine open in its own process; `timed(n)` runs
    n inferences back to back there and returns their seconds."""

    def __init__(self, host: Host, key: str) -> None:
        self._host, self.key = host, key

    def __call__(self) -> float:
        return self.timed(1)

    def timed(self, runs: int) -> float:
        return self._host.ask("time", self.key, runs)


def isolated_calls(specs: dict[str, tuple]) -> dict[str, IsolatedEngine]:
    """name -> (path, runtime, settings, batch): each opened by the one loader in a process of its
    own (opened side by side; an engine already open with the same file and settings is reused)."""
    host = start_host()
    keys = {name: _key(*spec) for name, spec in specs.items()}
    host.ask("open", {keys[name]: spec for name, spec in specs.items()})
    return {name: IsolatedEngine(host, key) for name, key in keys.items()}


def _key(path, runtime: str, settings: dict | None, batch: int | None) -> str:
    """Same file (path, size, modification time), runtime, settings and batch: same engine."""
    try:
        stat = os.stat(path)
        version = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = None   # the worker reports the missing file
    return json.dumps([str(Path(path).resolve()), version, runtime, settings, batch], sort_keys=True, default=str)


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def serve_host(fd: int) -> None:
    """The host: forks workers, relays block requests; ends when the parent's end closes."""
    conn = Connection(fd)
    from edgecompress.targets import deploy  # noqa: F401  (imported once, inherited by every fork)
    fork = mp.get_context("fork")
    workers: OrderedDict[str, tuple] = OrderedDict()   # key -> (process, connection)
    try:
        while True:
            message = conn.recv()
            if message[0] == "open":
                conn.send(_open(fork, workers, message[1]))
            else:
                _, key, runs = message
                workers.move_to_end(key)
                worker = workers[key][1]
                worker.send(runs)
                conn.send(worker.recv())
    except (EOFError, OSError):
        return   # the run has ended (or was killed): the workers are daemons and go with the host
    finally:
        for process, worker in workers.values():
            _close(process, worker)


def _open(fork, workers: OrderedDict, specs: dict[str, tuple]) -> str:
    started = {}
    for key, spec in specs.items():
        if key in workers:
            workers.move_to_end(key)
            continue
        parent, child = fork.Pipe()
        process = fork.Process(target=_serve, args=(spec, child), daemon=True)
        process.start()
        child.close()
        started[key] = (process, parent)
    errors = []
    for key, (process, parent) in started.items():
        if (reply := _ready(parent)) == READY:
            workers[key] = (process, parent)
        else:
            errors.append(reply)
            _close(process, parent)
    for key in [k for k in workers if k not in specs][:max(0, len(workers) - MAX_WORKERS)]:
        _close(*workers.pop(key))
    return errors[0] if errors else READY


def _ready(conn) -> str:
    try:
        return conn.recv() if conn.poll(START_TIMEOUT_S) else f"error: not open after {START_TIMEOUT_S} s"
    except EOFError:
        return "error: the engine's process ended while opening it"


def _close(process, conn) -> None:
    try:
        conn.send(0)
    except OSError:
        pass
    process.join(5)
    if process.is_alive():
        process.kill()


def _serve(spec: tuple, conn) -> None:
    """One engine in its process: runs n calls on request and sends back their seconds."""
    path, runtime, settings, batch = spec
    try:
        from edgecompress.targets.deploy import open_engine
        call = open_engine(path, runtime, settings, batch=batch or 1).caller()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(f"error: {type(exc).__name__}: {exc}")
        return
    conn.send(READY)
    try:
        while runs := conn.recv():
            start = time.perf_counter()
            for _ in range(runs):
                call()
            conn.send(time.perf_counter() - start)
    except EOFError:
        return
