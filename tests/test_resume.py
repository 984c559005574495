"""Kill a real `compress` during the search, resume it, and get the report of an uninterrupted run.

Tiny model and data (tests/tiny_specs.py) and a profile whose latency is `estimate`, so every
figure in the report is deterministic and two runs can be compared number for number.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
COMPARED = ("target", "precision", "max_acc_drop", "baseline", "result", "probes", "layers", "precisions",
            "parity_max_abs_diff", "artifacts", "budget")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    sys.path.insert(0, str(REPO))
    from tests.tiny_specs import estimated_without_overhead, trained_weights
    trained_weights(root / "tiny.pt")
    profiles = root / "profiles"
    profiles.mkdir()
    yaml = (REPO / "edgecompress" / "profiles" / "x86-cpu.yaml").read_text()
    (profiles / "tiny-est.yaml").write_text(estimated_without_overhead(yaml))
    argv = ["--target", "tiny-est", "--profiles", str(profiles), "--max-acc-drop", "3",
            "--model", "tests.tiny_specs:model", "--weights", str(root / "tiny.pt"), "--data", "tests.tiny_specs:data",
            "--finetune-epochs", "1", "--bn-batches", "2", "--batch-size", "64", "--min-search-interval", "0.05",
            "--probe-finetune-steps", "5", "--precision", "fp32", "--seed", "3", "--threads", "1"]
    ref = _compress(argv + ["--out", str(root / "ref")])
    assert ref.returncode == 0, ref.stderr
    return root, argv


def _start(argv, **extra_env):
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.Popen([sys.executable, "-m", "edgecompress.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _compress(argv) -> subprocess.CompletedProcess:
    proc = _start(argv)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _report(run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())
    return {k: report[k] for k in COMPARED}


def _wait_for(predicate, proc, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    raise AssertionError("timed out")


def _probes_saved(run: Path) -> int:
    try:
        return len(json.loads((run / ".checkpoints" / "prune.json").read_text())["search"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_during_search_resumes_from_the_saved_probe(setup):
    root, argv = setup
    run = root / "killed"
    # The search of the tiny model takes a second or two (probes take their latency from the table):
    # hold the prune stage before it commits (the debug hook), so the kill lands with the probes
    # saved in the checkpoint and the stage unfinished, however fast the machine.
    first = _start(argv + ["--out", str(run)], EDGECOMPRESS_SLOW_STAGE="prune:120")
    _wait_for(lambda: _probes_saved(run) >= 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = _probes_saved(run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert "prune" not in manifest["stages"] and not (run / "report.json").exists()
    assert (run / ".lock").exists()  # the killed run's stale lock ...
    resumed = _compress(argv + ["--out", str(run), "--resume"])  # ... does not block --resume
    assert resumed.returncode == 0, resumed.stderr
    assert f"{saved} probe(s) restored" in resumed.stderr
    ref = _report(root / "ref")
    new_probes = [ln for ln in resumed.stderr.splitlines() if " probe " in ln and "knob" in ln]   # "<mode> probe N: knob ..."
    assert len(new_probes) == len(ref["probes"]) - saved, "restored probes are not evaluated again"
    assert "✓ baseline: finished earlier" in resumed.stderr
    assert _report(run) == ref


def test_second_run_on_the_same_directory_is_refused_by_the_lock(setup):
    root, argv = setup
    run = root / "locked"
    first = _start(argv + ["--out", str(run)])
    try:
        _wait_for(lambda: (run / "manifest.json").exists(), first)
        second = _compress(argv + ["--out", str(run), "--resume"])
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another compress run (pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_truncated_artifact_is_detected_and_its_stage_redone(setup):
    root, argv = setup
    run = root / "truncated"
    shutil.copytree(root / "ref", run)
    onnx = run / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100])
    resumed = _compress(argv + ["--out", str(run), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    for kept in ("baseline", "prune", "finetune"):
        assert f"✓ {kept}: finished earlier" in resumed.stderr
    assert "model.onnx changed since stage export finished" in resumed.stderr
    assert "▶ export" in resumed.stderr and "▶ verify" in resumed.stderr
    assert onnx.stat().st_size > 100 and _report(run) == _report(root / "ref")


def test_finished_run_without_resume_is_refused_and_untouched(setup):
    root, argv = setup
    before = (root / "ref" / "manifest.json").read_text()
    proc = _compress(argv + ["--out", str(root / "ref")])
    assert proc.returncode == 2 and "already holds a finished run" in proc.stderr
    assert (root / "ref" / "manifest.json").read_text() == before
