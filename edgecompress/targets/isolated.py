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
Why the other processes of a comparison are stopped (SIGSTOP) while one runs its block, and each
ONNX Runtime session with an intra-op thread pool has a process of its own (`process_groups`): one
such session slows another even in another process, where it waits idle between its blocks after
the wait for a quiet CPU below (the cause not found: not its spinning after a run). Our INT8
ResNet-20 on ONNX Runtime over OpenVINO's INT8 timed 0.57-0.59x in eight comparisons without a
second such session, 0.68-1.13x [0.64, 1.57] with the original's FP32 session in a process beside
it, and 0.568 [0.564, 0.573] and 0.586 [0.576, 0.593] with it beside and frozen during the others'
blocks (`benchmarks/ort_pool_beside.py`). A user's application runs one engine: frozen, the others
take no CPU at all, so every engine of a comparison is timed in the same blocks, its ratio paired.
Alone, not beside OpenVINO engines in their process: there our ONNX Runtime FP32 ResNet-20 timed as
fast as OpenVINO's INT8 (0.85-1.01x), alone in a process of its own 1.4x slower (what a user's
application of either one gets).
Why each block is followed by a wait for a quiet CPU (`settle`): ONNX Runtime's threads spin ~40
ms after a run at its defaults, on the core the next engine needs; the block after them measured
3 % slower (a one-thread engine) to 60 % (another multi-thread one). The next block starts when
the process that just ran has gone quiet, after one untimed call that warms its engine again.
Why the headline's processes are fresh interpreters (`fresh`: verify, `compress check`), not
forks of the host: our ONNX Runtime INT8 ResNet-20 over the user's NNCF INT8, in processes forked
from three hosts, two comparisons each, timed 1.59-1.69x (median 1.664), in fresh interpreters
started the way a user's application starts 1.60-1.63x (median 1.625), each interval +-1-2 %
(`benchmarks/fork_vs_spawn.py`): a fork is 2.4 % off what the user gets and three times as
scattered. The other comparisons (table, decisions) keep the fork: a fresh interpreter imports the
loader for ~2 s, and they time hundreds of processes.
In those fresh comparisons every engine also has a process of its own (`each_alone`), OpenVINO
ones too: the user's NNCF INT8 over our shipped ONNX Runtime INT8, in six fresh comparisons each,
alternating (`benchmarks/verify_vs_user.py`): alone 1.513x [1.491, 1.533] (the independent
harness's pairs 1.498x), sharing its process with the original's OpenVINO FP32, as verify timed it
until session 22, 1.446x [1.400, 1.492].
Why a host started early: starting processes from a run that had used OpenVINO and DataLoader
workers crashed it (SIGSEGV in waitpid, vfork on or off). Why a plain subprocess rather than a
multiprocessing child: multiprocessing joins its children at exit, and the exit hook that stopped
the host first crashed the interpreter after OpenVINO and DataLoader workers had run (SIGSEGV in
the atexit call); the host needs no hook, it ends when its socket to this process closes, however
this process ends.

    calls = isolated_calls(process_groups({"a": (path, "openvino", settings, 1), "b": ...}))
    timing = compare(calls, reference="a")
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

from edgecompress.errors import UserError

READY = "ready"
START_TIMEOUT_S = 300      # the host imports the loader (PyTorch included) before it answers
QUIET = 0.1                # a process is quiet when its threads use < 10 % of a core over SETTLE_STEP_S
SETTLE_STEP_S = 0.002
SETTLE_MAX_S = 0.5         # ONNX Runtime spins ~40 ms after a run at its defaults

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


def isolated_calls(groups: list[dict[str, tuple]], *, fresh: bool = False) -> dict[str, IsolatedEngine]:
    """Each group name -> (path, runtime, settings, batch), opened by the one loader in a fresh
    process of its own (the previous comparison's processes end); names are unique across groups.
    `fresh`: each process a fresh interpreter (spawned, as a user's application starts), not a
    fork of the host: slower to start (~2 s, side by side), steadier (see the module docstring)."""
    host = start_host()
    host.ask("open", [{name: (str(path), *rest) for name, (path, *rest) in group.items()} for group in groups], fresh)
    return {name: IsolatedEngine(host, name) for group in groups for name in group}


def needs_own_process(runtime: str, settings: dict | None) -> bool:
    """An ONNX Runtime session with an intra-op thread pool (any thread count but 1)."""
    return runtime == "ort" and int((settings or {}).get("intra_op_num_threads", 0)) != 1


def process_groups(specs: dict[str, tuple], *, each_alone: bool = False) -> list[dict[str, tuple]]:
    """The engines of a comparison (specs' values (path, runtime, settings, batch)) in process
    groups for `isolated_calls`: those without an ONNX Runtime thread pool share one process (they
    share its layout luck, and their ratios hold); each session with a pool (`needs_own_process`)
    runs alone in a process of its own, as in a user's application. `each_alone`: every engine in a
    process of its own, as a user's application runs one (the headline's timing, `fresh`)."""
    if each_alone:
        return [{n: s} for n, s in specs.items()]
    shared = {n: s for n, s in specs.items() if not needs_own_process(s[1], s[2])}
    return [g for g in (shared, *({n: s} for n, s in specs.items() if n not in shared)) if g]


def settle() -> None:
    """Wait (at most SETTLE_MAX_S) until this process's threads are quiet: a runtime's threads
    that spin after a block must not run into the next engine's."""
    end = time.perf_counter() + SETTLE_MAX_S
    while time.perf_counter() < end:
        cpu, start = time.process_time(), time.perf_counter()
        time.sleep(SETTLE_STEP_S)
        if time.process_time() - cpu < QUIET * (time.perf_counter() - start):
            return


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def serve_host(fd: int) -> None:
    """The host: forks the comparison's workers (one per group; spawns them, fresh interpreters,
    when the "open" asks for `fresh`), relays block requests to the
    one holding the engine; ends when the parent's end closes (the workers are daemons and go
    with it)."""
    conn = Connection(fd)
    from edgecompress.targets import deploy  # noqa: F401  (imported once, inherited by every fork)
    fork = mp.get_context("fork")
    workers, route = [], {}   # (process, connection) of the comparison being timed; engine -> worker
    try:
        while True:
            message = conn.recv()
            if message[0] == "open":
                for worker in workers:
                    _close(*worker)
                _, groups, fresh = message
                workers, route, reply = _open_all(mp.get_context("spawn") if fresh else fork, groups)
                conn.send(reply)
            else:
                conn.send(_alone(route[message[1]], message[1:], workers))
    except (EOFError, OSError):
        return
    finally:
        for worker in workers:
            _close(*worker)


@contextmanager
def stopped(pids: list[int]):
    """The processes `pids` stopped (SIGSTOP) for the block, and running again after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _alone(worker: Connection, request: tuple, workers: list) -> object:
    """`request` answered by `worker` while the comparison's other processes are stopped."""
    with stopped([process.pid for process, conn in workers if conn is not worker]):
        worker.send(request)
        return worker.recv()


def _open_all(context, groups: list[dict[str, tuple]]) -> tuple[list, dict, str]:
    """(workers, engine -> worker, READY or the first error): every group's worker started first,
    then each waited for (a fresh interpreter's imports take ~2 s: the workers of a comparison
    start side by side). A worker that did not open is closed with the others at the next "open"."""
    workers, route, reply = [], {}, READY
    for group in groups:
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(group, child), daemon=True)
        process.start()
        child.close()
        workers.append((process, parent))
        route.update(dict.fromkeys(group, parent))
    for process, parent in workers:
        try:
            answer = parent.recv() if parent.poll(START_TIMEOUT_S) else f"error: not open after {START_TIMEOUT_S} s"
        except EOFError:
            answer = "error: the engines' process ended while opening them"
        reply = answer if reply == READY else reply
    return workers, route, reply


def _close(process, conn) -> None:
    try:
        conn.send(None)
    except OSError:
        pass
    process.join(5)
    if process.is_alive():
        process.kill()


def _serve(specs: dict[str, tuple], conn) -> None:
    """The engines of one group in their process: on request, one untimed call of an engine, then
    n timed ones; waits for the process to go quiet (`settle`), then sends back their seconds."""
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
            call()
            start = time.perf_counter()
            for _ in range(runs):
                call()
            seconds = time.perf_counter() - start
            settle()
            conn.send(seconds)
    except EOFError:
        return
