"""The run directory: atomic artifacts, hashes in the manifest, refusal rules, the lock."""
import errno
import json
import os
import subprocess
import sys

import pytest

from edgecompress.errors import UserError
from edgecompress.pipeline.rundir import LOCK, MANIFEST, RunDir, atomic_write

INPUTS = {"config": {"target": "x86-cpu", "seed": 0}}


def _finish(rd, name, files):
    with rd.staging(name) as out:
        for rel, text in files.items():
            (out / rel).write_text(text)
        rd.finish_stage(name, staged=out, files={rel.split(".")[0]: rel for rel in files}, data={"n": 1}, seconds=0.1)


def test_finished_stage_is_recorded_with_hashes_and_survives_reopen(tmp_path):
    with RunDir.open(tmp_path / "run", resume=False, inputs=INPUTS) as rd:
        _finish(rd, "export", {"model.onnx": "onnx bytes"})
        assert rd.stage_done("export") and (rd.path / "model.onnx").read_text() == "onnx bytes"
        assert not (rd.path / ".staging" / "export").exists()
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    art = manifest["stages"]["export"]["artifacts"]["model"]
    assert art["path"] == "model.onnx" and len(art["sha256"]) == 64 and art["size"] == 10
    with RunDir.open(tmp_path / "run", resume=True, inputs=INPUTS) as rd:
        assert rd.stage_done("export") and rd.stage_record("export")["data"] == {"n": 1}


def test_truncated_artifact_makes_its_stage_unfinished(tmp_path):
    with RunDir.open(tmp_path, resume=False, inputs=INPUTS) as rd:
        _finish(rd, "export", {"model.onnx": "0123456789"})
    (tmp_path / "model.onnx").write_text("01234")  # truncated by a crash or a user
    with RunDir.open(tmp_path, resume=True, inputs=INPUTS) as rd:
        assert not rd.stage_done("export")
        assert any("model.onnx changed" in n for n in rd.notes)


def test_same_size_change_is_caught_by_the_hash(tmp_path):
    with RunDir.open(tmp_path, resume=False, inputs=INPUTS) as rd:
        _finish(rd, "export", {"model.onnx": "0123456789"})
    (tmp_path / "model.onnx").write_text("9876543210")
    with RunDir.open(tmp_path, resume=True, inputs=INPUTS) as rd:
        assert not rd.stage_done("export")


def test_existing_run_needs_resume_and_the_same_inputs(tmp_path):
    with RunDir.open(tmp_path, resume=False, inputs=INPUTS) as rd:
        rd.mark_finished()
    with pytest.raises(UserError, match="already holds a finished run"):
        RunDir.open(tmp_path, resume=False, inputs=INPUTS)
    with pytest.raises(UserError, match="different inputs"):
        RunDir.open(tmp_path, resume=True, inputs={"config": {"target": "x86-cpu", "seed": 1}})


def test_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "holiday.jpg").write_text("not ours")
    with pytest.raises(UserError, match="not empty"):
        RunDir.open(tmp_path, resume=False, inputs=INPUTS)
    assert (tmp_path / "holiday.jpg").read_text() == "not ours"


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        RunDir.open(blocker / "run", resume=False, inputs=INPUTS)


def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / "report.json"
    dst.write_text("old")

    def half_then_full_disk(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="no space left"):
        atomic_write(dst, half_then_full_disk)
    assert dst.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failed_stage_is_not_marked_and_leaves_nothing_that_looks_finished(tmp_path):
    with RunDir.open(tmp_path, resume=False, inputs=INPUTS) as rd:
        with pytest.raises(RuntimeError):
            with rd.staging("export") as out:
                (out / "model.onnx").write_text("half")
                raise RuntimeError("killed")
        assert rd.stage_record("export") is None and not (tmp_path / "model.onnx").exists()


def test_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    rd = RunDir.open(tmp_path, resume=False, inputs=INPUTS)
    try:
        code = ("from edgecompress.pipeline.rundir import RunDir\n"
                f"RunDir.open({str(tmp_path)!r}, resume=True, inputs={INPUTS!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and "another compress run" in proc.stderr
    finally:
        rd.lock.release()
    assert not (tmp_path / LOCK).exists()


def test_stale_lock_of_a_killed_run_does_not_block_resume(tmp_path):
    with RunDir.open(tmp_path, resume=False, inputs=INPUTS):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "start": "1"}))
    with RunDir.open(tmp_path, resume=True, inputs=INPUTS) as rd:
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid() and rd.lock.held


def test_build_scratch_of_a_killed_run_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """Engines are built in /tmp, outside the run directory; a SIGKILLed run never removes its
    folder, so the next run removes the folders of processes that are gone (and no other)."""
    from edgecompress.pipeline.builder import SCRATCH_PREFIX, scratch_dir
    from edgecompress.pipeline.rundir import process_start
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = tmp_path / f"{SCRATCH_PREFIX}{gone.pid}-{process_start(gone.pid) or 0}-abc"
    gone.wait()
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-{process_start(os.getpid())}-def"
    other = tmp_path / f"{SCRATCH_PREFIX}notours"
    for folder in (dead, live, other):
        (folder / "0000-fp32").mkdir(parents=True)
    new = scratch_dir()
    assert not dead.exists() and live.exists() and other.exists()
    assert new.parent == tmp_path and new.name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
