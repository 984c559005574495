"""`compress` on bad input: one `error:` line and one `hint:` line, exit 2, no traceback, the user's
files untouched, and no run directory that looks finished."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgecompress.cli import main
from edgecompress.zoo import CHECKPOINTS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tests.tiny_specs:model", "--data", "tests.tiny_specs:data"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # `tests.tiny_specs:...` specs import from the current directory


def _user_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.strip().startswith("note:")]
    assert code == 2, err
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert "Traceback" not in err
    return "\n".join(lines)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_target_suggests_the_closest(capsys):
    line = _user_error(capsys, ["--target", "jetson-oring", "--max-acc-drop", "1"])
    assert "unknown target 'jetson-oring'" in line and "did you mean 'jetson-orin'" in line


@pytest.mark.parametrize("argv, expected", [
    (["--max-acc-drop", "-1"], "--max-acc-drop -1 is outside 0..100"),
    (["--max-acc-drop", "101"], "--max-acc-drop 101 is outside 0..100"),
    (["--latency-budget-ms", "0"], "--latency-budget-ms 0 is not positive"),
    ([], "no budget given"),
    (["--max-acc-drop", "one"], "invalid float value"),
    (["--max-acc-drop", "1", "--precision", "int4"], "unknown --precision 'int4'"),
    (["--max-acc-drop", "1", "--criterion", "l3"], "--criterion: unknown criterion 'l3'"),
    (["--max-acc-drop", "1", "--criterion", "permutation:grp=share"], "has no option 'grp=share'"),
    (["--max-acc-drop", "1", "--criterion", "l2:group=share"], "criterion 'l2' has no option"),
])
def test_bad_numbers_and_choices(capsys, argv, expected):
    assert expected in _user_error(capsys, ["--target", "x86-cpu", *argv])


def test_missing_target(capsys):
    assert "--target" in _user_error(capsys, ["--max-acc-drop", "1"])


def test_weights_that_do_not_fit_the_model(capsys, tmp_path):
    weights = CHECKPOINTS / "resnet20_fashion-mnist.pt"
    before = _sha(weights)
    line = _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", *TINY, "--weights", str(weights),
                                "--out", str(tmp_path / "run")])
    assert "do not fit the model" in line
    assert _sha(weights) == before and not (tmp_path / "run").exists()


def test_corrupt_weights_file(capsys, tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    line = _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", *TINY, "--weights", str(bad)])
    assert f"cannot load {bad}" in line and bad.read_bytes() == b"PK\x03\x04 truncated"


@pytest.mark.parametrize("spec, expected", [
    ("nosuchmodule_xyz:data", "cannot import 'nosuchmodule_xyz'"),
    ("tests.tiny_specs:nope", "has no attribute 'nope'"),
    ("imagefolder:/nonexistent/dir", "does not exist"),
    ("fashion-mnist:/nonexistent/dir", "does not exist"),
    ("what is this", "cannot resolve the data spec"),
])
def test_data_spec_that_does_not_resolve(capsys, spec, expected):
    assert expected in _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", "--data", spec,
                                            "--model", "tests.tiny_specs:model"])


def test_images_whose_shape_the_model_rejects(capsys):
    line = _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", "--model", "tests.tiny_specs:model",
                                "--data", "tests.tiny_specs:data_wrong_shape"])
    assert "rejects images of shape (3, 12, 12)" in line


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    line = _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", *TINY, "--out", str(blocker / "run")])
    assert "is not writable" in line and blocker.read_text() == "mine"


def test_existing_finished_run_without_resume(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"schema": 1, "finished": True, "inputs": {}, "stages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    line = _user_error(capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", *TINY, "--out", str(run)])
    assert "already holds a finished run" in line and "add --resume" in line
    assert json.loads((run / "manifest.json").read_text()) == manifest


def test_targets_lists_profiles(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("x86-cpu", "jetson-orin", "mobile-arm64"):
        assert name in out


def test_check_on_a_directory_that_is_not_a_run(capsys, tmp_path):
    assert "is not a run directory" in _user_error(capsys, ["check", str(tmp_path)])


@pytest.mark.slow
def test_real_process_prints_no_traceback():
    """The console script itself: the one-line error and exit 2 also hold outside pytest."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "edgecompress.cli", "--target", "jetson-oring", "--max-acc-drop", "1"],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: unknown target 'jetson-oring'") and "did you mean 'jetson-orin'" in proc.stderr


def test_nan_weights(capsys, tmp_path):
    sys.path.insert(0, str(REPO))
    from tests.tiny_specs import model
    state = model().state_dict()
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    assert "NaN or infinite values in conv2.weight" in _user_error(
        capsys, ["--target", "x86-cpu", "--max-acc-drop", "1", *TINY, "--weights", str(path)])
