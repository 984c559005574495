"""`compress` on bad input: one `error:` line and one `hint:` line, exit 2, no traceback, the user's
files untouched, and no run directory that looks finished."""
import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgecompress.calibration import METHODS
from edgecompress.cli import _config, _run_parser, main
from edgecompress.pipeline.config import RunConfig, choices
from edgecompress.tasks.select import TASKS
from edgecompress.pruning import ALLOCATIONS, CRITERIA
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


# -- the flags are generated from RunConfig's declarations (issue 28, item 7) --------------------

MINIMAL = ["--target", "x86-cpu", "--max-acc-drop", "1"]


def _flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if "flag" in f.metadata]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help_entries(capsys) -> dict[str, str]:
    """--flag -> its entry in `compress --help`, whitespace normalized."""
    with pytest.raises(SystemExit):
        main(["--help"])
    entries = re.split(r"\n  (?=--)", capsys.readouterr().out)[1:]
    return {e.split()[0]: " ".join(e.split()) for e in entries}


def test_help_lists_every_flag_field_with_its_default(capsys):
    entries = _help_entries(capsys)
    assert set(entries) == {_flag(f.name) for f in _flag_fields()}
    assert "--command" not in entries and "--parity-images" not in entries
    for f in _flag_fields():
        if type(f.default) in (int, float, str):
            assert f"(default: {f.default})" in entries[_flag(f.name)], f.name


def test_parser_defaults_are_the_declared_ones(monkeypatch):
    parser = _run_parser()
    for f in _flag_fields():
        default = None if f.default is dataclasses.MISSING else f.default
        assert parser.get_default(f.name) == (list(default) if isinstance(default, tuple) else default), f.name
    monkeypatch.setattr(RunConfig.__dataclass_fields__["seed"], "default", 7)
    assert _run_parser().get_default("seed") == 7


def test_a_run_without_flags_gets_the_declared_defaults():
    config = _config(_run_parser().parse_args(MINIMAL), MINIMAL)
    assert config == RunConfig(target="x86-cpu", max_acc_drop=1, command=shlex.join(["compress", *MINIMAL]))


def test_flag_values_reach_the_config():
    argv = [*MINIMAL, "--finetune-samples", "0", "--profiles", "a", "--profiles", "b", "--resume", "--lr", "0.5",
            "--task", "detect", "--imgsz", "64", "--crop", "24"]
    config = _config(_run_parser().parse_args(argv), argv)
    assert (config.finetune_samples, config.profiles, config.resume, config.lr, config.task, config.imgsz,
            config.crop) == (None, ("a", "b"), True, 0.5, "detect", 64, 24)
    assert config.command == shlex.join(["compress", *argv])


@pytest.mark.parametrize("name, names", [("allocation", ALLOCATIONS.names), ("criterion", CRITERIA.names),
                                         ("task", lambda: ["auto", *TASKS]), ("calibration", lambda: list(METHODS)),
                                         ("precision", lambda: ["auto", "fp32", "fp16", "int8"])])
def test_choices_come_from_the_registries(capsys, name, names):
    assert choices(name) == names()
    assert " | ".join(names()) in _help_entries(capsys)[_flag(name)]


@pytest.mark.parametrize("name, cause", [("allocation", "unknown --allocation 'nope'"),
                                         ("task", "unknown --task 'nope'"),
                                         ("calibration", "unknown --calibration 'nope'"),
                                         ("precision", "unknown --precision 'nope'"),
                                         ("criterion", "--criterion: unknown criterion 'nope'")])
def test_an_unknown_choice_is_a_user_error_naming_the_valid_ones(capsys, name, cause):
    error, hint = _user_error(capsys, [*MINIMAL, _flag(name), "nope"]).splitlines()
    assert cause in error
    assert all(valid in hint for valid in choices(name)), hint


def test_help_survives_a_broken_registry(monkeypatch, capsys):
    import edgecompress.pruning
    monkeypatch.setattr(edgecompress.pruning, "CRITERIA", None)
    assert "NAME: see README" in _help_entries(capsys)["--criterion"]


def test_long_work_written_to_a_log_file_says_it_started():
    """A run piped to a file has no progress bar; it gets one line, so minutes of work are not silence."""
    import io

    from rich.console import Console

    from edgecompress.pipeline.ui import UI
    ui, out = UI(), io.StringIO()
    ui.console = Console(file=out, highlight=False, soft_wrap=True)
    with ui.progress("latency table: building", 147) as bar:
        bar.update(1)
    assert out.getvalue().strip() == "latency table: building (147) ..."
