"""One run per directory: a second `compress` on a busy --out refuses with a clear message; the lock
of a killed run (its process gone) does not block --resume."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from _faults import SLOW_ENV, SLOW_MARK, Started, doc_row_check, run_cli, tiny_argv, user_error_lines
from edgecompress.errors import UserError
from edgecompress.pipeline.rundir import LOCK, RunLock, process_start


@pytest.mark.slow
def test_second_run_refuses_then_resume_after_kill_proceeds(tmp_path, fault_weights):
    run = tmp_path / "run"
    first = Started(tiny_argv(run, fault_weights), tmp_path / "first.log", **{SLOW_ENV: "baseline:600"})
    try:
        first.wait_for(SLOW_MARK.format(stage="baseline"))
        lock = json.loads((run / LOCK).read_text())
        assert lock["pid"] == first.proc.pid
        for extra in ([], ["--resume"]):  # with or without --resume: the lock is checked first
            second = run_cli(tiny_argv(run, fault_weights, *extra))
            error, hint = user_error_lines(second.stderr, tmp_path)
            assert second.returncode == 2
            assert error == f"error: another compress run (pid {first.proc.pid} on {socket.gethostname()}) is using <tmp>/run"
            assert hint == "hint: wait for it to finish, or choose another --out"
        assert first.proc.poll() is None, "the second run must not disturb the first"
    finally:
        first.kill()
    doc_row_check("out-busy", "a second `compress` on the --out of a running one",
                  error.replace(str(first.proc.pid), "PID").replace(socket.gethostname(), "HOST"), hint)
    assert (run / LOCK).exists()  # SIGKILL left it behind
    third = Started(tiny_argv(run, fault_weights, "--resume"), tmp_path / "third.log", **{SLOW_ENV: "baseline:600"})
    try:
        third.wait_for(SLOW_MARK.format(stage="baseline"))  # got past the stale lock and started work
        assert json.loads((run / LOCK).read_text())["pid"] == third.proc.pid
    finally:
        third.kill()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """A process of ours that is alive for the test (not the parent: in a container it may be pid 0/1)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _write_lock(path, **owner) -> None:
    path.write_text(json.dumps(owner))


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    _write_lock(tmp_path / LOCK, pid=_dead_pid(), host=socket.gethostname(), start="1")
    lock = RunLock(tmp_path / LOCK)
    lock.acquire()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_lock_torn_by_a_kill_while_written_is_taken_over(tmp_path):
    (tmp_path / LOCK).write_text('{"pid": 12')
    lock = RunLock(tmp_path / LOCK)
    lock.acquire()
    assert lock.held
    lock.release()


def test_reused_pid_is_not_taken_for_the_owner(tmp_path, live_pid):
    """A live pid whose start time differs from the recorded one: the owner died, the pid was reused."""
    _write_lock(tmp_path / LOCK, pid=live_pid, host=socket.gethostname(), start="-1")
    lock = RunLock(tmp_path / LOCK)
    lock.acquire()
    assert lock.held
    lock.release()


def test_live_owner_refuses_with_its_pid(tmp_path, live_pid):
    _write_lock(tmp_path / LOCK, pid=live_pid, host=socket.gethostname(), start=process_start(live_pid))
    with pytest.raises(UserError, match=f"another compress run \\(pid {live_pid} on "):
        RunLock(tmp_path / LOCK).acquire()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == live_pid  # not stolen


def test_lock_of_another_host_is_respected(tmp_path):
    """On a shared (network) file system the pid means nothing here: only its own host may clear it."""
    _write_lock(tmp_path / LOCK, pid=_dead_pid(), host="some-other-host", start="1")
    with pytest.raises(UserError, match="on some-other-host"):
        RunLock(tmp_path / LOCK).acquire()
