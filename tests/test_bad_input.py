"""Bad input, case by case: a one-line cause and a hint, exit code 2, no traceback, nothing on
stdout, the user's files unchanged (hashed before and after), no run directory that looks finished.

Each case's exact message (temporary paths shown as <tmp>) is also in docs/reliability.md; a test
fails when the two drift apart. Regenerate the table after changing a message:
    FAULTS_DOC_TABLE=/tmp/rows.jsonl .venv/bin/pytest tests/test_bad_input.py tests/test_faults_atomic.py
    .venv/bin/python tests/_faults.py /tmp/rows.jsonl    # prints the markdown table
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from _faults import FIXTURES, REPO, SPECS, doc_row_check, user_error_lines
from edgecompress.cli import main

TINY = ["--model", f"{SPECS}:model", "--data", f"{SPECS}:data"]
PROFILE = ["--target", "tiny-estimate", "--profiles", str(FIXTURES / "profiles")]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # `tests.fixtures...` specs import from the current directory
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the CLI sets the thread count of this (shared) process


@dataclass
class Case:
    id: str
    what: str                                   # the row's description in docs/reliability.md
    argv: Callable[[Path, Path], list[str]]     # (user dir, user's weights) -> command line
    cause: str                                  # expected in the `error:` line
    hint: str                                   # expected in the `hint:` line
    early: bool = True                          # refused before any stage starts


def _w(weights: Path) -> list[str]:
    return ["--weights", str(weights)]


def _with_weights(make: Callable[[Path, Path], None] | None, name: str = "bad.pt"):
    """--weights FILE where `make(good_weights, FILE)` wrote FILE (None: FILE does not exist)."""
    def argv(user, weights):
        path = user / name
        if make:
            make(weights, path)
        return [*PROFILE, *TINY, *_w(path), "--max-acc-drop", "1", "--out", str(user.parent / "run")]
    return argv


def _corrupt(src: Path, dst: Path) -> None:
    dst.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def _other_architecture(src: Path, dst: Path) -> None:
    from tests.fixtures.fault_specs import model_wide
    torch.save(model_wide().state_dict(), dst)


def _nan(src: Path, dst: Path) -> None:
    state = torch.load(src, weights_only=True)
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, dst)


def _data(function: str, *, model: str = "model"):
    """--data tests.fixtures.fault_specs:<function>, with the model (and its weights when it is TinyNet)."""
    def argv(user, weights):
        return [*PROFILE, "--model", f"{SPECS}:{model}", *(_w(weights) if model == "model" else []),
                "--data", f"{SPECS}:{function}", "--max-acc-drop", "1", "--out", str(user.parent / "run")]
    return argv


def _model_file(cut: bool):
    """--model FILE: a whole model saved with torch.save(model), cut to half, or random bytes."""
    def argv(user, weights):
        from tests.fixtures.fault_specs import model
        path = user / "model.pt"
        torch.save(model(), path)
        data = path.read_bytes()
        _corrupt(path, path) if not cut else path.write_bytes(data[:len(data) // 2])
        return [*PROFILE, "--model", str(path), "--data", f"{SPECS}:data", "--max-acc-drop", "1",
                "--out", str(user.parent / "run")]
    return argv


def _pngs(folder: Path, n: int) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8), "L").save(folder / f"{i}.png")


def _folder(layout: Callable[[Path], None]):
    def argv(user, weights):
        root = user / "images"
        root.mkdir()
        layout(root)
        return [*PROFILE, "--model", f"{SPECS}:model", *_w(weights), "--data", f"imagefolder:{root}",
                "--max-acc-drop", "1", "--out", str(user.parent / "run")]
    return argv


def _empty_classes(root: Path) -> None:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)


def _one_class(root: Path) -> None:
    _pngs(root / "train" / "a", 4)
    _pngs(root / "val" / "a", 2)


def _flags(*flags: str, target: list[str] = PROFILE):
    def argv(user, weights):
        return [*target, *TINY, *_w(weights), *flags, "--out", str(user.parent / "run")]
    return argv


def _profile(text_edit: Callable[[str], str]):
    def argv(user, weights):
        profiles = user / "profiles"
        profiles.mkdir()
        src = (FIXTURES / "profiles" / "tiny-estimate.yaml").read_text()
        (profiles / "edge-box.yaml").write_text(text_edit(src))
        return ["--target", "edge-box", "--profiles", str(profiles), *TINY, *_w(weights), "--max-acc-drop", "1",
                "--out", str(user.parent / "run")]
    return argv


def _unwritable_out(user, weights):
    blocker = user / "a-file"
    blocker.write_text("the user's file")
    return [*PROFILE, *TINY, *_w(weights), "--max-acc-drop", "1", "--out", str(blocker / "run")]


CASES = [
    Case("weights-missing", "`--weights` names a file that does not exist", _with_weights(None, "missing.pt"),
         "missing.pt does not exist", "check the path"),
    Case("weights-corrupt", "weights file of random bytes", _with_weights(_corrupt),
         "cannot load <tmp>/user/bad.pt: not a PyTorch checkpoint", "truncated or not a PyTorch checkpoint"),
    Case("weights-truncated", "weights file cut to half its size", _with_weights(_truncated),
         "cannot load <tmp>/user/bad.pt: the zip archive torch.save writes is truncated or damaged",
         "truncated or not a PyTorch checkpoint"),
    Case("weights-other-architecture", "weights of a twice-as-wide model", _with_weights(_other_architecture),
         "do not fit the model", "give the weights trained for this architecture"),
    Case("weights-nan", "a NaN in the weights", _with_weights(_nan),
         "has NaN or infinite values in conv2.weight", "did not diverge"),
    Case("model-file-truncated", "`--model FILE` (a whole saved model) cut to half", _model_file(cut=True),
         "cannot load <tmp>/user/model.pt: the zip archive torch.save writes is truncated", "truncated"),
    Case("model-file-corrupt", "`--model FILE` of random bytes", _model_file(cut=False),
         "cannot load <tmp>/user/model.pt: not a PyTorch checkpoint", "not a PyTorch checkpoint"),
    Case("forward-fails-on-data", "3-channel images for a 1-channel model", _data("data_rgb"),
         "rejects images of shape (3, 12, 12)", "give data the model was built for"),
    Case("labels-outside-classes", "labels 0..9 for a model with 4 outputs", _data("data_ten_classes"),
         "has labels up to 9 but the model", "give data whose labels are the model's classes"),
    Case("data-function-one-class", "a data function whose labels are all 0", _data("data_one_class"),
         "has a single class", "at least two classes"),
    Case("data-function-empty", "a data function returning empty splits", _data("data_empty"),
         "the train split of tests.fixtures.fault_specs:data_empty is empty", "at least one image per class"),
    Case("data-dir-empty", "`imagefolder:DIR` with DIR empty", _folder(lambda root: None),
         "has no train/ subfolder", "needs DIR/train/<class>/ and DIR/val/<class>/"),
    Case("data-dir-no-images", "class folders without images", _folder(_empty_classes),
         "holds no images", "put images"),
    Case("data-dir-one-class", "one class folder", _folder(_one_class),
         "has 1 class folder(s)", "at least two classes"),
    Case("unknown-target", "`--target jetson-oring`", _flags("--max-acc-drop", "1", target=["--target", "jetson-oring"]),
         "unknown target 'jetson-oring'", "did you mean 'jetson-orin'"),
    Case("profile-unknown-key", "profile YAML with `chanel_multiple:`",
         _profile(lambda s: s.replace("channel_multiple:", "chanel_multiple:")),
         "unknown key 'chanel_multiple'", "compare with a shipped profile"),
    Case("profile-bad-value", "profile YAML with `latency: estimated`",
         _profile(lambda s: s.replace("latency: estimate", "latency: estimated")),
         "key 'latency'", "compare with a shipped profile"),
    Case("profile-yaml-syntax", "profile YAML with an unclosed `[`",
         _profile(lambda s: s.replace("precisions: [fp32, int8]", "precisions: [fp32, int8")),
         "while parsing a flow sequence (line 8, column 13)", "fix the YAML syntax"),
    Case("max-acc-drop-negative", "`--max-acc-drop -1`", _flags("--max-acc-drop", "-1"),
         "--max-acc-drop -1 is outside 0..100", "absolute percentage points"),
    Case("max-acc-drop-over-100", "`--max-acc-drop 101`", _flags("--max-acc-drop", "101"),
         "--max-acc-drop 101 is outside 0..100", "absolute percentage points"),
    Case("max-acc-drop-nan", "`--max-acc-drop nan`", _flags("--max-acc-drop", "nan"),
         "--max-acc-drop nan is outside 0..100", "absolute percentage points"),
    Case("latency-budget-zero", "`--latency-budget-ms 0`", _flags("--latency-budget-ms", "0"),
         "--latency-budget-ms 0 is not positive", "give milliseconds > 0"),
    Case("latency-budget-negative", "`--latency-budget-ms -5`", _flags("--latency-budget-ms", "-5"),
         "--latency-budget-ms -5 is not positive", "give milliseconds > 0"),
    Case("no-budget", "neither budget given", _flags(),
         "no budget given", "add --max-acc-drop POINTS and/or --latency-budget-ms MS"),
    Case("out-unwritable", "`--out` below a regular file", _unwritable_out,
         "is not writable", "choose a directory you can write to"),
    Case("onnx-unsupported-op", "a layer using `torch.fft.rfft2` (no ONNX export)",
         _data("data", model="model_spectral"),
         "operation aten::fft_rfft2 in layer gate (SpectralGate)", "replace that operation", early=False),
]


def _tree_hashes(root: Path) -> dict[str, str]:
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_not_finished_looking(out: Path) -> None:
    """Either no run directory, or an unfinished one where every file under its final name is one
    the manifest records, with the recorded hash (nothing half-written that looks finished)."""
    if not out.exists():
        return
    import json
    from _faults import sha256
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    assert not (out / "report.json").exists()
    assert manifest is None or not manifest["finished"]
    assert not (out / ".staging").exists() and not (out / ".lock").exists()
    recorded = {a["path"]: a["sha256"] for st in (manifest or {"stages": {}})["stages"].values()
                for a in st["artifacts"].values()}
    for f in out.rglob("*"):
        rel = str(f.relative_to(out))
        if f.is_file() and rel not in ("manifest.json", ".checkpoints/prune.json"):
            assert recorded.get(rel) == sha256(f), f"{rel} is in the run directory but not recorded as finished"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capfd, fault_weights):
    user = tmp_path / "user"
    user.mkdir()
    weights = Path(shutil.copy(fault_weights, user / "weights.pt"))
    argv = case.argv(user, weights)
    before = _tree_hashes(user)
    code = main(argv)
    out, err = capfd.readouterr()
    error, hint = user_error_lines(err, tmp_path, early=case.early)
    assert code == 2, err
    assert out == "", f"stdout should stay empty on an error, got:\n{out[:2000]}"
    assert case.cause in error and case.hint in hint, err
    assert _tree_hashes(user) == before, "the user's files changed"
    assert_not_finished_looking(tmp_path / "run")
    doc_row_check(case.id, case.what, error, hint)


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The console script itself, outside pytest's capture: exit 2, two lines, no traceback."""
    from _faults import run_cli
    proc = run_cli([*PROFILE, *TINY, "--max-acc-drop", "-1", "--out", str(tmp_path / "run")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: --max-acc-drop -1 is outside 0..100",
                                        "hint: it is in absolute percentage points, e.g. --max-acc-drop 1 for one point"]


def _mount_tmpfs(path: Path, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(["size=1m", *options])
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_read_only_out(tmp_path, capfd, fault_weights):
    """`--out` on a read-only file system (a real `mount -o ro` tmpfs; root ignores chmod)."""
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        code = main([*PROFILE, *TINY, "--weights", str(fault_weights), "--max-acc-drop", "1", "--out", str(mnt / "run")])
        error, hint = user_error_lines(capfd.readouterr().err, tmp_path)
        assert code == 2 and "is not writable" in error and "choose a directory you can write to" in hint
        assert not (mnt / "run").exists()
        doc_row_check("out-read-only", "`--out` on a read-only file system", error, hint)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- a full disk ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("where", ["stage-write", "commit"])
def test_disk_full_injected(where, tmp_path, capfd, monkeypatch, fault_weights):
    """ENOSPC while fine-tuning saves its model (inside the stage), or while the run directory
    moves it into place (the commit): one line, exit 2, and the model is not under its final name."""
    from edgecompress.pipeline import rundir
    real_save, real_replace = torch.save, os.replace

    def full_save(obj, f, *a, **k):
        if str(f).endswith("model_pruned.pt"):
            Path(f).write_bytes(b"half a model")  # what a full disk leaves: a partial file
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    def full_replace(src, dst):
        if str(dst).endswith("model_pruned.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    if where == "stage-write":
        monkeypatch.setattr(torch, "save", full_save)
    else:
        monkeypatch.setattr(rundir.os, "replace", full_replace)
    out = tmp_path / "run"
    from _faults import tiny_argv
    code = main(tiny_argv(out, fault_weights))
    error, hint = user_error_lines(capfd.readouterr().err, tmp_path, early=False)
    assert code == 2 and error.startswith("error: no space left on the device while")
    assert hint == "hint: free some disk space, then run again with --resume"
    assert not (out / "model_pruned.pt").exists()
    assert_not_finished_looking(out)
    import json
    manifest = json.loads((out / "manifest.json").read_text())
    assert "finetune" not in manifest["stages"] and "prune" in manifest["stages"] and not manifest["finished"]
    doc_row_check(f"disk-full-{where}", {"stage-write": "ENOSPC while a stage writes its file (injected)",
                                         "commit": "ENOSPC while the file is moved into place (injected)"}[where],
                  error, hint)


@pytest.mark.slow
def test_disk_full_for_real_then_resume(tmp_path, fault_weights, reference_run):
    """A 1 MiB tmpfs filled to 100 KiB free: the real process stops with one line and exit 2, the
    run directory holds nothing half-written; once space is freed, --resume finishes with the
    report of an uninterrupted run."""
    import json
    from _faults import comparable, run_cli, tiny_argv
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (1024 - 100) * 1024)
        out = mnt / "run"
        proc = run_cli(tiny_argv(out, fault_weights))
        error, hint = user_error_lines(proc.stderr, tmp_path, early=False)
        assert proc.returncode == 2 and proc.stdout == ""
        assert error.startswith("error: no space left on the device while") and "--resume" in hint
        assert_not_finished_looking(out)
        filler.unlink()
        resumed = run_cli(tiny_argv(out, fault_weights, "--resume"))
        assert resumed.returncode == 0, resumed.stderr
        got, want = (json.loads((d / "report.json").read_text()) for d in (out, reference_run))
        assert comparable(got) == comparable(want)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
