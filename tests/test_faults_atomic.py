"""Atomic artifacts: a file of a finished stage that is truncated, changed or deleted is caught by
its hash in the manifest and that stage (and every later one) is redone on `--resume`; earlier
stages are kept. Unit level: a write that fails half-way leaves neither the final name nor a
temporary file, and a failed commit leaves the stage unfinished.

(That no artifact appears under its final name while its stage is still running is shown by the
kill chain in test_faults_resume.py, which looks at the run directory at the moment of each kill.)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from _faults import REPO, STAGES, comparable, manifest, sha256, tiny_argv
from edgecompress.cli import main
from edgecompress.errors import UserError
from edgecompress.pipeline import rundir as rundir_mod
from edgecompress.pipeline.rundir import RunDir, atomic_write, write_json


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


DAMAGE = [("prune", "model_searched.pt", _truncate), ("finetune", "model_pruned.pt", _truncate),
          ("export", "model.onnx", _truncate), ("calibrate", "model_int8.onnx", _flip_byte),
          ("verify", "report.html", _delete)]


@pytest.mark.slow
@pytest.mark.parametrize("stage, name, damage", DAMAGE, ids=[f"{d[1]}{d[2].__name__}" for d in DAMAGE])
def test_damaged_artifact_is_redone_on_resume(stage, name, damage, tmp_path, capsys, reference_run, fault_weights):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = manifest(run)
    damage(run / name)
    assert main(tiny_argv(run, fault_weights, "--resume")) == 0
    log = capsys.readouterr().err
    after, first = manifest(run), STAGES.index(stage)
    for kept in STAGES[:first]:
        assert f"✓ {kept}: finished earlier, kept" in log and after["stages"][kept] == before["stages"][kept]
    for redone in STAGES[first:]:
        assert f"▶ {redone}:" in log and after["stages"][redone]["at"] > before["stages"][redone]["at"]
    assert f"{name} changed since stage {stage} finished; stage {stage} is redone" in log
    recorded = {a["path"]: a["sha256"] for a in after["stages"][stage]["artifacts"].values()}
    assert sha256(run / name) == recorded[name]
    if stage != "verify":  # the report files carry this run's timings and command line
        assert recorded == {a["path"]: a["sha256"] for a in before["stages"][stage]["artifacts"].values()}
    got, want = (json.loads((d / "report.json").read_text()) for d in (run, reference_run))
    assert comparable(got) == comparable(want)


def test_resume_of_a_finished_intact_run_redoes_nothing(tmp_path, capsys, reference_run, fault_weights):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = manifest(run)
    assert main(tiny_argv(run, fault_weights, "--resume")) == 0
    log = capsys.readouterr().err
    assert all(f"✓ {s}: finished earlier, kept" in log for s in STAGES) and "▶" not in log
    assert manifest(run)["stages"] == before["stages"]


# -- unit level: the write and commit primitives ------------------------------------------------------

def test_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="no space left on the device while writing"):
        atomic_write(tmp_path / "model.onnx", half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_failed_manifest_write_keeps_the_previous_manifest(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_json(path, {"stages": {"export": "done"}})
    real_fsync = os.fsync

    def kill_before_rename(fd):
        raise KeyboardInterrupt  # stands for a kill between writing the temporary and the rename
    monkeypatch.setattr(rundir_mod.os, "fsync", kill_before_rename)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"stages": {}})
    monkeypatch.setattr(rundir_mod.os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"stages": {"export": "done"}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_failed_commit_leaves_the_stage_unfinished(tmp_path, monkeypatch):
    """Two files; the second cannot be moved into place: the stage is not recorded as finished, so a
    resume redoes it (the first file, complete, may already carry its final name)."""
    inputs = {"config": {"target": "x", "seed": 0}}
    real_replace = os.replace

    def full_on_second(src, dst):
        if str(dst).endswith("model.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)
    with RunDir.open(tmp_path / "run", resume=False, inputs=inputs) as rd:
        with rd.staging("build") as out:
            (out / "model.xml").write_text("<net/>")
            (out / "model.bin").write_bytes(b"\0" * 64)
            monkeypatch.setattr(rundir_mod.os, "replace", full_on_second)
            with pytest.raises(UserError, match="no space left"):
                rd.finish_stage("build", staged=out, files={"engine": "model.xml", "weights": "model.bin"},
                                data={}, seconds=0.1)
            monkeypatch.setattr(rundir_mod.os, "replace", real_replace)
        assert not rd.stage_done("build")
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "build" not in on_disk["stages"] and not (tmp_path / "run" / "model.bin").exists()
    assert not (tmp_path / "run" / ".staging").exists()
