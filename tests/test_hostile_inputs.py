"""Hostile inputs of issue 27: each gives one `error:` line naming the file and its cause, a `hint:`
line, exit code 2, and writes nothing. The exact lines are in docs/reliability.md ("Hostile input")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.errors import UserError


def _image_folder(root: Path, suffix: str) -> None:
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}{suffix}")


def _user_error_in_child(code: str) -> dict:
    """Run `code` (which must raise a UserError) in a fresh Python process; its cause and hint.

    The DataLoader workers start there, not in pytest's own process: a process that has created
    OpenVINO sessions and then started workers crashed with SIGSEGV at its next subprocess
    (scripts/test.sh; with or without this change)."""
    import json
    import subprocess
    import sys
    from _faults import REPO, env
    wrapper = ("import json, sys\nfrom edgecompress.errors import UserError\n"
               "def main():\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
               "if __name__ == '__main__':\n    try:\n        main()\n    except UserError as exc:\n"
               "        print(json.dumps({'type': type(exc).__name__, 'cause': exc.cause, 'hint': exc.hint}))\n"
               "    else:\n        print(json.dumps(None))\n")
    proc = subprocess.run([sys.executable, "-c", wrapper], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_in_a_worker_is_one_user_error_with_its_hint(tmp_path, suffix):
    """The file passes the header check and fails when a DataLoader worker decodes it: the user
    gets the worker's cause and hint, not "Caught UserError in DataLoader worker process 0"."""
    root = tmp_path / "images"
    _image_folder(root, suffix)
    broken = root / "train" / "b" / f"2{suffix}"
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    # folder-stats decodes the training images in a worker
    got = _user_error_in_child("from pathlib import Path\nfrom edgecompress.inputs.imagefolder import image_folder\n"
                               f"image_folder(Path({str(root)!r}), workers=1)")
    assert got is not None and got["type"] == "UserError", got
    assert got["cause"].startswith(f"cannot read image {broken}: "), got
    assert "\n" not in got["cause"] and "DataLoader worker" not in got["cause"]
    assert got["hint"] == "remove or replace the broken file"


def test_a_workers_user_error_reaches_the_main_process_whole():
    """Any dataset's UserError, raised in a worker process, keeps its cause and hint."""
    got = _user_error_in_child("from edgecompress.inputs.loaders import loader\n"
                               "from tests.test_hostile_inputs import _Refuses\n"
                               "for _ in loader(_Refuses(), batch_size=2, workers=1):\n    pass")
    assert got == {"type": "UserError", "cause": "item 3 is bad", "hint": "fix item 3"}


class _Refuses:
    """Four items, the last one refused (module level: workers receive it pickled)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 3:
            raise UserError("item 3 is bad", "fix item 3")
        return np.zeros(2, np.float32), 0


# ---------------------------------------------------------------- --resume loads no code


class _Planted:
    """What an attacker could put in a run directory: unpickling it calls open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _rundir_with(tmp_path: Path, saved) -> "RunDir":
    import torch
    from edgecompress.pipeline.rundir import RunDir
    torch.save(saved, tmp_path / "model_pruned.pt")
    manifest = {"stages": {"finetune": {"finished": True, "artifacts": {"pruned_model": {"path": "model_pruned.pt"}}}}}
    return RunDir(tmp_path, manifest)


def test_resume_does_not_run_code_from_a_planted_model_file(tmp_path):
    marker = tmp_path / "pwned"
    rundir = _rundir_with(tmp_path, {"model": _Planted(marker)})
    with pytest.raises(UserError) as info:
        rundir.load_model("finetune", "pruned_model")
    assert not marker.exists(), "unpickling ran code from the run directory"
    assert info.value.cause.startswith(f"cannot load {tmp_path / 'model_pruned.pt'} safely: ")
    assert "\n" not in info.value.cause


def test_resume_still_loads_the_modules_a_run_saved(tmp_path):
    import torch
    from edgecompress.zoo import create_model
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    loaded = _rundir_with(tmp_path, model).load_model("finetune", "pruned_model")
    x = torch.randn(2, 1, 16, 16)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_a_module_class_that_was_never_imported_is_not_imported_to_load_it(tmp_path):
    """Only classes of modules already imported are allowed; naming another module imports nothing."""
    import sys

    import torch
    from edgecompress.pipeline.rundir import _imported, _module_classes
    torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    assert _module_classes(tmp_path / "m.pt") == [torch.nn.Linear]
    assert "antigravity" not in sys.modules
    assert _imported("antigravity.Thing", sys.modules) is None and "antigravity" not in sys.modules


# ---------------------------------------------------------------- ssh addresses that would be options


@pytest.mark.parametrize("url", ["ssh://-oProxyCommand=touch%20/tmp/x@host", "ssh://me@-oProxyCommand=sh",
                                 "ssh://-me@host:22"])
def test_an_ssh_user_or_host_starting_with_a_dash_is_refused(url):
    from edgecompress.profiles import SSH_URL, load_profile
    from edgecompress.targets.ssh import SSHDevice, SSHProbe
    assert not SSH_URL.match(url)
    with pytest.raises(UserError, match="may not start with '-'"):
        SSHDevice.parse(url)
    with pytest.raises(UserError, match="may not start with '-'"):
        SSHProbe(url, load_profile("x86-cpu"))


def test_a_profile_with_an_option_like_ssh_address_is_invalid():
    import pydantic

    from edgecompress.profiles import load_profile
    data = load_profile("x86-cpu").model_dump()
    with pytest.raises(pydantic.ValidationError, match="may not start with '-'"):
        type(load_profile("x86-cpu")).model_validate({**data, "latency": "ssh://-oProxyCommand=sh@host"})


def test_ssh_and_scp_end_their_options_before_the_address(monkeypatch, tmp_path):
    import subprocess

    from edgecompress.profiles import load_profile
    from edgecompress.targets.ssh import SSHProbe
    seen = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: seen.append(argv) or
                        subprocess.CompletedProcess(argv, 0, "", ""))
    probe = SSHProbe("ssh://me@board:2222", load_profile("x86-cpu"))
    probe.ssh("true", timeout=5)
    probe.copy([tmp_path / "model.xml"], "/tmp/d")
    for argv in seen:
        assert argv.index("--") < min(i for i, a in enumerate(argv) if a.startswith("me@board"))


# ---------------------------------------------------------------- compress check on a damaged run directory


@pytest.fixture(scope="module")
def check_run_dir(tmp_path_factory) -> Path:
    """A run directory as verify leaves it (tiny OpenVINO engine, baseline, samples)."""
    pytest.importorskip("openvino")
    import torch

    from edgecompress.exporters import to_onnx
    from edgecompress.profiles import load_profile
    from edgecompress.report.baseline import write_latency_baseline
    from edgecompress.targets import get_target
    from edgecompress.zoo import create_model
    run = tmp_path_factory.mktemp("check") / "run"
    run.mkdir()
    torch.manual_seed(0)
    onnx = to_onnx(create_model("tiny-resnet"), run / "model.onnx", input_shape=(1, 16, 16))
    profile = load_profile("x86-cpu")
    bench = profile.benchmark.model_copy(update={"warmup": 2, "iterations": 10, "min_time_s": 0.0, "threads": 1})
    target = get_target(profile.model_copy(update={"benchmark": bench}))
    build = target.build(onnx, run, precision="fp32")
    inputs = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    write_latency_baseline(run, target=target, build=build, latency=target.measure(build), precision="fp32",
                           inputs=inputs)
    return run


def _json_edit(**changes):
    def edit(run: Path) -> None:
        import json
        path = run / "latency_baseline.json"
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DROP:
                del data[key]
            elif callable(value):
                value(data)
            else:
                data[key] = value
        path.write_text(json.dumps(data))
    return edit


_DROP = object()


def _write(name: str, data: bytes):
    return lambda run: (run / name).write_bytes(data)


def _truncate(name: str):
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[:200])


def _npz_without_outputs(run: Path) -> None:
    with np.load(run / "latency_baseline.npz") as d:
        inputs = d["inputs"]
    with open(run / "latency_baseline.npz", "wb") as f:
        np.savez(f, inputs=inputs)


def _link_samples_out(run: Path) -> None:
    (run / "latency_baseline.npz").unlink()
    (run / "latency_baseline.npz").symlink_to(run.parent.parent / "elsewhere.npz")


DAMAGED = [
    # id, what (docs), damage, expected error line (<run> = the run directory)
    ("baseline-not-json", "latency_baseline.json cut to `{not json`", _write("latency_baseline.json", b"{not json"),
     "error: <run>/latency_baseline.json: not valid JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1))"),
    ("baseline-not-object", "latency_baseline.json is a JSON list", _write("latency_baseline.json", b"[1, 2]"),
     "error: <run>/latency_baseline.json: not a JSON object (a list)"),
    ("baseline-missing-key", "latency_baseline.json without `engine` and `samples`",
     _json_edit(engine=_DROP, samples=_DROP), "error: <run>/latency_baseline.json: no engine, no samples"),
    ("baseline-wrong-type", "`median_ms` is a string", _json_edit(median_ms="fast"),
     "error: <run>/latency_baseline.json: median_ms is str"),
    ("baseline-bad-profile", "the stored profile's runtime is `cuda`",
     _json_edit(profile=lambda d: d["profile"].update(runtime="cuda")),
     "error: <run>/latency_baseline.json: bad stored profile: runtime: Input should be 'openvino', 'tensorrt' or 'ort'"),
    ("baseline-ssh-option", "`latency_source` is `ssh://-oProxyCommand=sh@board`",
     _json_edit(latency_source="ssh://-oProxyCommand=sh@board"),
     "error: <run>/latency_baseline.json: latency_source 'ssh://-oProxyCommand=sh@board' is not local, estimate or "
     "ssh://user@host[:port]"),
    ("baseline-build-unknown-key", "the stored build has a key BuildResult does not know",
     _json_edit(build=lambda d: d["build"].update(evil=1)),
     "error: <run>/latency_baseline.json: build has unknown keys evil"),
    ("baseline-absolute-path", "`engine` is `/etc/passwd`", _json_edit(engine="/etc/passwd"),
     "error: <run>/latency_baseline.json: path '/etc/passwd' leaves the run directory"),
    ("baseline-dotdot-path", "the build's engine is `../outside/model.xml`",
     _json_edit(build=lambda d: d["build"].update(engine={"path": "../outside/model.xml"})),
     "error: <run>/latency_baseline.json: path '../outside/model.xml' leaves the run directory"),
    ("reference-dotdot-path", "the reference engine is `reference/../../x.xml`",
     _json_edit(reference={"engine": "reference/../../x.xml", "onnx": "model.onnx", "precision": "fp32",
                           "ratio": {"ratio": 1.0, "low": 1.0, "high": 1.0}}),
     "error: <run>/latency_baseline.json: path 'reference/../../x.xml' leaves the run directory"),
    ("samples-link-out", "latency_baseline.npz is a symbolic link out of the run", _link_samples_out,
     "error: <run>/latency_baseline.json: path 'latency_baseline.npz' leads out of the run directory (a link)"),
    ("samples-corrupt", "latency_baseline.npz of random bytes",
     _write("latency_baseline.npz", np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()),
     "error: <run>/latency_baseline.npz: damaged: This file contains pickled (object) data"),
    ("samples-truncated", "latency_baseline.npz cut to 200 bytes", _truncate("latency_baseline.npz"),
     "error: <run>/latency_baseline.npz: damaged: "),
    ("samples-missing-array", "latency_baseline.npz without its `outputs` array", _npz_without_outputs,
     "error: <run>/latency_baseline.npz: damaged: no outputs array"),
    ("device-baselines-corrupt", "latency_baseline.device.json is `{\"cpu\": 3}`",
     _write("latency_baseline.device.json", b'{"cpu": 3}'),
     "error: <run>/latency_baseline.device.json: not a map of device -> {median_ms, ...}"),
    ("engine-missing", "model.bin deleted", lambda run: (run / "model.bin").unlink(),
     "error: <run>/model.bin is missing: the run's engine is incomplete"),
    ("engine-xml-corrupt", "model.xml (the OpenVINO engine) is `<net garbage`", _write("model.xml", b"<net garbage"),
     "error: <run>/model.xml: openvino cannot load or run it: Unable to read the model: "),
    ("engine-bin-truncated", "model.bin (the engine's weights) cut to 10 bytes", _write("model.bin", b"\0" * 10),
     "error: <run>/model.xml: openvino cannot load or run it: "),
]


_WHAT = {c[0]: c[1] for c in DAMAGED} | {"image-truncated-png": "`imagefolder:DIR` with a PNG cut to half (its header reads, its pixels do not)", "image-truncated-jpg": "`imagefolder:DIR` with a JPEG cut to half"}


def _tree(root: Path) -> dict:
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("case", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_check_on_a_damaged_run_is_one_line_exit_2_and_writes_nothing(case, check_run_dir, tmp_path, capfd):
    import shutil

    from edgecompress.cli import main
    case_id, _what, damage, expected = case
    run = tmp_path / "copy" / "run"
    shutil.copytree(check_run_dir, run)
    damage(run)
    before = _tree(run)
    code = main(["check", str(run)])
    out, err = capfd.readouterr()
    lines = err.replace(str(run), "<run>").splitlines()
    assert code == 2 and "Traceback" not in err and out == "", err
    assert len(lines) == 2 and lines[0].startswith(expected) and lines[1].startswith("hint: "), err
    assert _tree(run) == before, "a check of a damaged run wrote into it"
    _doc_row_check(case_id, lines)


def _doc_row_check(case_id: str, lines: list[str]) -> None:
    """docs/reliability.md's hostile-input table holds this case's exact lines. To regenerate the
    rows: HOSTILE_DOC_ROWS=/tmp/rows.jsonl pytest tests/test_hostile_inputs.py (appends, then passes)."""
    import json
    import os
    if os.environ.get("HOSTILE_DOC_ROWS"):
        with open(os.environ["HOSTILE_DOC_ROWS"], "a") as f:
            f.write(json.dumps({"id": case_id, "what": _WHAT.get(case_id, ""), "lines": lines}) + "\n")
        return
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    row = next((ln for ln in doc.splitlines() if ln.startswith(f"| {case_id} |")), None)
    assert row is not None, f"docs/reliability.md has no row for {case_id}"
    for line in lines:
        assert f"`{line}`".replace("|", "\\|") in row, f"{case_id}: docs/reliability.md shows another line than {line!r}"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_compress_on_a_folder_with_a_truncated_image_prints_one_line(tmp_path, suffix):
    """The whole command, in its own process (as a user runs it): the folder statistics are
    decoded in a DataLoader worker. (In-process, after other tests' OpenVINO work, the worker start
    crashed pytest itself with SIGSEGV, with or without this change.)"""
    from _faults import run_cli
    root = tmp_path / "images"
    _image_folder(root, suffix)
    broken = root / "train" / "b" / f"2{suffix}"
    broken.write_bytes(broken.read_bytes()[:broken.stat().st_size // 2])
    proc = run_cli(["--target", "tiny-estimate", "--profiles", str(Path(__file__).parent / "fixtures" / "profiles"),
                    "--model", "tests.fixtures.fault_specs:model", "--data", f"imagefolder:{root}",
                    "--max-acc-drop", "1", "--out", str(tmp_path / "run")], timeout=300)
    err = proc.stderr
    lines = [ln for ln in err.replace(str(tmp_path), "<tmp>").splitlines() if not ln.startswith("  note:")]
    assert proc.returncode == 2 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert proc.stdout == "" and len(lines) == 2 and lines[1] == "hint: remove or replace the broken file", err
    assert lines[0].startswith(f"error: cannot read image <tmp>/images/train/b/2{suffix}: image file is truncated")
    assert not (tmp_path / "run" / "report.json").exists()
    _doc_row_check(f"image-truncated-{suffix[1:]}", lines)


@pytest.mark.parametrize("rel", ["/etc/hostname", "../outside.pt", "a/../../outside.pt"])
def test_resume_refuses_a_manifest_path_outside_the_run(tmp_path, rel):
    """The manifest is a run file too: an artifact path out of the run directory is refused,
    not hashed or loaded."""
    from edgecompress.pipeline.rundir import RunDir
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "outside.pt").write_bytes(b"x")
    manifest = {"stages": {"finetune": {"finished": True, "artifacts": {
        "pruned_model": {"path": rel, "sha256": "0" * 64, "size": 1}}}}}
    rundir = RunDir(run, manifest)
    for call in (lambda: rundir.stage_done("finetune"), lambda: rundir.artifact("finetune", "pruned_model")):
        with pytest.raises(UserError) as info:
            call()
        assert info.value.cause == f"{run / 'manifest.json'}: path {rel!r} leaves the run directory"


def test_user_errors_keep_their_hint_across_processes():
    """A UserError pickled in a worker (multiprocessing, a pool) comes back with its hint."""
    import pickle

    from edgecompress.check import NotRunnableHere
    from edgecompress.errors import MissingBackendError
    for exc in (UserError("cause", "hint"), NotRunnableHere("cannot", "run it on the device"),
                MissingBackendError("openvino", "openvino")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and (back.cause, back.hint) == (exc.cause, exc.hint)
