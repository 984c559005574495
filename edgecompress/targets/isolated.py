"""The engines of a comparison timed in a fresh process of their own, not in the run's.

The run's own process is no place to time an engine: after training it holds PyTorch's thread
pools, DataLoader workers and every engine it built, and ratios measured there differed from a
fresh process's by -8 to +9 % (docs/benchmarks.md, "user_view"). So every local comparison goes
through a host started before the run loads any runtime (`start_host`, called first by the runner
and by `compress check`): a fresh interpreter that imports the one loader and runs nothing else.
For each comparison it forks one worker that opens the comparison's engines with `open_engine`
and their settings, as the user's code does; the protocol (timing.compare) interleaves blocks and
pairs ratios as before, each block's calls run and are timed inside the worker, so the pipes stay
outside the clock.

Why one process for the engines of a comparison, not one each: a process's own layout luck moves
an engine's speed by several percent. Two copies of one engine, each in a process of its own,
measured 0.96-1.02x of each other; the pruned ResNet-20 over its unpruned engine measured 0.86-0.98
in six fresh pairs of processes (intervals +-1-2 %, so the spread is the processes'), 0.92-0.94
in six fresh single processes: engines sharing a process share its luck, and their ratio holds.
Why a host started early: starting processes from a run that had used OpenVINO and DataLoader
workers crashed it (SIGSEGV in waitpid, vfork on or off). Why a plain subprocess rather than a
multiprocessing child: multiprocessing joins its children at exit, and the exit hook that stopped
the host first crashed the interpreter after OpenVINO and DataLoader workers had run (SIGSEGV in
the atexit call); the host needs no hook, it ends when its socket to this process closes, however
this process ends.

    calls = isolated_calls({"a": (path, "openvino", settings, 1), "b": ...})
    timing = compare(calls, reference="a")
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from edgecompress.errors import UserError

READY = "ready"
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
    """A zero-argument call (one inference) of an engine open in the comparison's process;
    `timed(n)` runs n inferences back to back there and returns their seconds."""

    def __init__(self, host: Host, name: str) -> None:
        self._host, self.name = host, name

    def __call__(self) -> float:
        return self.timed(1)

    def timed(self, runs: int) -> float:
        return self._host.ask("time", self.name, runs)


def isolated_calls(specs: dict[str, tuple]) -> dict[str, IsolatedEngine]:
    """name -> (path, runtime, settings, batch): all opened by the one loader in one fresh process
    (the previous comparison's process ends)."""
    host = start_host()
    host.ask("open", {name: (str(path), *rest) for name, (path, *rest) in specs.items()})
    return {name: IsolatedEngine(host, name) for name in specs}


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def serve_host(fd: int) -> None:
    """The host: forks the comparison's worker, relays block requests; ends when the parent's end
    closes (the worker is a daemon and goes with it)."""
    conn = Connection(fd)
    from edgecompress.targets import deploy  # noqa: F401  (imported once, inherited by every fork)
    fork = mp.get_context("fork")
    worker = None   # (process, connection) of the comparison being timed
    try:
        while True:
            message = conn.recv()
            if message[0] == "open":
                if worker:
                    _close(*worker)
                worker, reply = _open(fork, message[1])
                conn.send(reply)
            else:
                worker[1].send(message[1:])
                conn.send(worker[1].recv())
    except (EOFError, OSError):
        return
    finally:
        if worker:
            _close(*worker)


def _open(fork, specs: dict[str, tuple]) -> tuple[tuple | None, str]:
    parent, child = fork.Pipe()
    process = fork.Process(target=_serve, args=(specs, child), daemon=True)
    process.start()
    child.close()
    try:
        reply = parent.recv() if parent.poll(START_TIMEOUT_S) else f"error: not open after {START_TIMEOUT_S} s"
    except EOFError:
        reply = "error: the engines' process ended while opening them"
    if reply != READY:
        _close(process, parent)
        return None, reply
    return (process, parent), reply


def _close(process, conn) -> None:
    try:
        conn.send(None)
    except OSError:
        pass
    process.join(5)
    if process.is_alive():
        process.kill()


def _serve(specs: dict[str, tuple], conn) -> None:
    """The engines of one comparison in their process: runs n calls of one on request and sends
    back their seconds."""
    try:
        from edgecompress.targets.deploy import open_engine
        calls = {key: open_engine(path, runtime, settings, batch=batch or 1).caller()
                 for key, (path, runtime, settings, batch) in specs.items()}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(f"error: {type(exc).__name__}: {exc}")
        return
    conn.send(READY)
    try:
        while request := conn.recv():
            key, runs = request
            call = calls[key]
            start = time.perf_counter()
            for _ in range(runs):
                call()
            conn.send(time.perf_counter() - start)
    except EOFError:
        return
