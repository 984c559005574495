"""Latency baseline, generated regression test and `compress check`, on a real tiny OpenVINO engine.

No test here asserts a timing against a threshold: "unchanged passes" runs with a huge tolerance,
the injected regressions divide the baseline by a million (or halve the recorded ratio), and the
slower engine does several times the work of the original, with the same outputs. Remote (ssh)
timings come from a fake probe; estimates are deterministic.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.check import EXIT_UNMEASURED, NotRunnableHere, check_main, check_run, open_run
from edgecompress.report.baseline import (BASELINE_FILE, DEVICE_BASELINES_FILE, SAMPLES_FILE, TEST_FILE,
                                          _relative, decode_paths, encode_paths, write_latency_baseline,
                                          write_regression_test)

pytest.importorskip("openvino")
FAST = {"warmup": 2, "iterations": 10, "min_time_s": 0.0}  # tiny engine: a measurement takes ms
HUGE_TOLERANCE = 50.0  # "unchanged passes" must not depend on how busy this machine is


def _fast_target(name: str = "x86-cpu"):
    from edgecompress.profiles import load_profile
    from edgecompress.targets import get_target
    profile = load_profile(name)
    bench = profile.benchmark.model_copy(update={**FAST, "threads": 1})
    return get_target(profile.model_copy(update={"benchmark": bench}))


@pytest.fixture(scope="module")
def built_run(tmp_path_factory) -> Path:
    """A run directory as the verify stage leaves it: ONNX, IR, baseline, samples, test file."""
    import torch
    from edgecompress.exporters import to_onnx
    from edgecompress.zoo import create_model
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    onnx = to_onnx(create_model("tiny-resnet"), run / "model.onnx", input_shape=(1, 16, 16))
    target = _fast_target()
    build = target.build(onnx, run, precision="fp32")
    latency = target.measure(build)
    inputs = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    write_latency_baseline(run, target=target, build=build, latency=latency, precision="fp32", inputs=inputs)
    write_regression_test(run)
    (run / "manifest.json").write_text("{}")
    return run


@pytest.fixture
def run_dir(built_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(built_run, dst)
    return dst


def _edit_baseline(run_dir: Path, **changes) -> None:
    path = run_dir / BASELINE_FILE
    baseline = json.loads(path.read_text())
    baseline.update(changes)
    path.write_text(json.dumps(baseline))


def test_baseline_records_how_it_was_measured(built_run: Path) -> None:
    b = json.loads((built_run / BASELINE_FILE).read_text())
    assert b["target"] == "x86-cpu" and b["runtime"] == "openvino" and b["runtime_version"]
    assert b["method"] == "measured" and b["precision"] == "fp32" and b["threads"] == 1
    assert b["input_shape"] == [1, 1, 16, 16] and b["engine"] == "model.xml"
    assert 0 < b["median_ms"] <= b["p90_ms"] and b["iterations"] >= FAST["iterations"]
    assert b["tolerance"] == 0.15 and b["device"]
    with np.load(built_run / SAMPLES_FILE) as s:
        assert s["inputs"].shape == (4, 1, 16, 16) and s["outputs"].shape == (4, 10)


def test_unchanged_engine_passes(run_dir: Path) -> None:
    result = check_run(run_dir, tolerance=HUGE_TOLERANCE)
    assert result.passed and result.exit_code == 0, result.message()
    assert result.outputs_max_diff < 1e-4
    absolute = result.comparison("engine latency")
    assert absolute is not None and absolute.judged == "interval" and absolute.low is not None
    assert "latency ok" in result.message()


def test_injected_regression_fails_with_baseline_now_tolerance(run_dir: Path, capsys) -> None:
    b = json.loads((run_dir / BASELINE_FILE).read_text())
    _edit_baseline(run_dir, median_ms=b["median_ms"] / 1e6)  # as if the engine got 10^6x slower
    result = check_run(run_dir)
    assert not result.passed and result.outputs_ok and result.exit_code == 1
    msg = result.message()
    assert "LATENCY REGRESSION" in msg and "engine latency" in msg and "limit" in msg
    assert check_main(run_dir) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "engine latency" in out


def test_changed_outputs_fail(run_dir: Path) -> None:
    with np.load(run_dir / SAMPLES_FILE) as s:
        inputs, outputs = s["inputs"], s["outputs"]
    with open(run_dir / SAMPLES_FILE, "wb") as f:
        np.savez(f, inputs=inputs, outputs=outputs + 1.0)
    result = check_run(run_dir, tolerance=HUGE_TOLERANCE)
    assert not result.outputs_ok and not result.passed and result.exit_code == 1


def test_thread_override_is_used_and_said(run_dir: Path) -> None:
    engine = open_run(run_dir, threads=2)
    assert engine.target.profile.benchmark.threads == 2
    assert any("threads overridden" in n for n in engine.notes)


def _estimate_of(run_dir: Path) -> float:
    from edgecompress.targets import get_target
    engine = open_run(run_dir)
    return get_target(engine.target.profile, device="estimate").measure(engine.build).median_ms


def test_an_estimated_run_is_compared_with_an_estimate_not_a_measurement(run_dir: Path) -> None:
    """The run's figure is the estimator's: the check re-estimates (deterministic), never measures."""
    estimate = _estimate_of(run_dir)
    _edit_baseline(run_dir, method="estimated", median_ms=estimate)
    same = check_run(run_dir)
    c = same.comparison("estimated latency")
    assert same.passed and same.timed == "estimated" and c.now == estimate and len(same.comparisons) == 1
    assert not (run_dir / DEVICE_BASELINES_FILE).exists()   # nothing measured, nothing recorded
    _edit_baseline(run_dir, median_ms=estimate / 2)           # the engine's estimate doubled
    assert check_run(run_dir).exit_code == 1


def test_an_estimated_reference_ratio_is_compared_with_an_estimated_ratio(run_dir: Path) -> None:
    """mobile-arm64's case: the stored ratio is the estimator's; a measured x86 ratio is not compared with it."""
    estimate = _estimate_of(run_dir)
    reference = {"engine": "model.xml", "onnx": "model.onnx", "precision": "fp32",
                 "ratio": {"ratio": 0.5, "low": 0.5, "high": 0.5}}     # engine == reference: estimated 1.0
    _edit_baseline(run_dir, method="estimated", median_ms=estimate, reference=reference)
    result = check_run(run_dir)
    ratio = result.comparison("estimated ratio")
    assert ratio is not None and ratio.now == 1.0 and ratio.low is None and not ratio.ok
    assert result.exit_code == 1


def test_another_device_compares_nothing_and_does_not_pass(run_dir: Path, capsys) -> None:
    """No reference engine, another machine: nothing to compare. It says so and exits 3, unless accepted."""
    _edit_baseline(run_dir, device="Some Other CPU (local)", median_ms=1e-9)
    first = check_run(run_dir, tolerance=HUGE_TOLERANCE)
    assert not first.passed and first.exit_code == EXIT_UNMEASURED and not first.comparisons
    assert "LATENCY NOT CHECKED" in first.message() and "--accept-unmeasured" in first.message()
    assert check_main(run_dir, tolerance=HUGE_TOLERANCE, accept_unmeasured=True) == 0
    # what the first check recorded on this device is what the next one compares with
    records = json.loads((run_dir / DEVICE_BASELINES_FILE).read_text())
    assert len(records) == 1
    second = check_run(run_dir, tolerance=HUGE_TOLERANCE)
    assert second.passed and second.comparison("engine latency").baseline == next(iter(records.values()))["median_ms"]
    key = next(iter(records))
    records[key]["median_ms"] /= 1e6
    (run_dir / DEVICE_BASELINES_FILE).write_text(json.dumps(records))
    assert check_run(run_dir).exit_code == 1


def test_the_same_cpu_model_on_another_host_is_not_the_same_device(run_dir: Path) -> None:
    _edit_baseline(run_dir, host="some-other-host", median_ms=1e-9)
    result = check_run(run_dir, tolerance=HUGE_TOLERANCE)
    assert result.comparison("engine latency") is None and result.exit_code == EXIT_UNMEASURED


def _fake_ssh(monkeypatch, median_ms: float, host: str = "board") -> list:
    """The ssh probe's measurements, faked: what it times and what it reports."""
    from edgecompress.targets.base import Latency
    from edgecompress.targets.ssh import SSHProbe
    timed = []

    def measure(self, build):
        timed.append(build)
        return Latency(median_ms=median_ms, p90_ms=float("nan"), iterations=100, method="measured",
                       runtime=build.runtime, device=f"{host} (ssh)")
    monkeypatch.setattr(SSHProbe, "__call__", measure)
    return timed


def test_an_ssh_run_is_timed_over_ssh_and_compared(run_dir: Path, monkeypatch) -> None:
    """verify records this machine's CPU as an ssh run's device; the probe says "<host> (ssh)".
    The check matches by what the probe reports, so it compares (it used to record and pass)."""
    b = json.loads((run_dir / BASELINE_FILE).read_text())
    _edit_baseline(run_dir, latency_source="ssh://me@board", median_ms=2.0)   # device: this CPU, as verify wrote it
    timed = _fake_ssh(monkeypatch, 2.1)
    ok = check_run(run_dir)
    c = ok.comparison("engine latency on board (ssh)")
    assert ok.passed and ok.timed == "over ssh" and c.now == 2.1 and c.low is None and len(timed) == 1
    _fake_ssh(monkeypatch, 2.0 * 1.15 * 1.01)
    bad = check_run(run_dir)
    assert bad.exit_code == 1 and "no interval" in bad.message()
    assert not (run_dir / DEVICE_BASELINES_FILE).exists() and b["device"]


def test_an_ssh_run_on_another_device_is_not_compared(run_dir: Path, monkeypatch) -> None:
    _edit_baseline(run_dir, latency_source="ssh://me@board", median_ms=2.0)
    _fake_ssh(monkeypatch, 2.0, host="other-board")
    assert check_run(run_dir).exit_code == EXIT_UNMEASURED


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        check_run(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        check_main(tmp_path / "nope")


def test_missing_engine_is_a_user_error(run_dir: Path) -> None:
    (run_dir / "model.bin").unlink()
    with pytest.raises(UserError, match="model.bin is missing"):
        check_run(run_dir)


def test_paths_round_trip_relative_to_the_run(tmp_path: Path) -> None:
    value = {"engine": tmp_path / ".staging" / "build" / "model.xml", "files": {"w": tmp_path / "a" / "b.bin"},
             "notes": ["x"], "n": 3}
    encoded = encode_paths(value, tmp_path)
    assert encoded["engine"] == {"path": "model.xml"} and encoded["files"]["w"] == {"path": "a/b.bin"}
    assert decode_paths(encoded, tmp_path)["files"]["w"] == tmp_path / "a" / "b.bin"
    assert _relative(Path("/elsewhere/model.onnx"), tmp_path) == "model.onnx"


@pytest.mark.slow
def test_generated_pytest_passes_then_fails_on_regression(run_dir: Path) -> None:
    env = {**os.environ, "EDGECOMPRESS_TOLERANCE": str(HUGE_TOLERANCE)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(run_dir / TEST_FILE)]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 passed" in ok.stdout
    b = json.loads((run_dir / BASELINE_FILE).read_text())
    _edit_baseline(run_dir, median_ms=b["median_ms"] / 1e6)
    env.pop("EDGECOMPRESS_TOLERANCE")
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "LATENCY REGRESSION" in bad.stdout and "engine latency" in bad.stdout
    assert "1 failed, 1 passed" in bad.stdout


@pytest.fixture
def jetson_run(built_run: Path, tmp_path: Path) -> Path:
    """jetson-orin without TensorRT here: ONNX + build_engine.sh, estimated latency."""
    from edgecompress.targets.tensorrt import tensorrt_local
    if tensorrt_local():
        pytest.skip("TensorRT is available here: the plan is built and measured locally")
    run = tmp_path / "jetson"
    run.mkdir()
    shutil.copy(built_run / "model.onnx", run / "model.onnx")
    target = _fast_target("jetson-orin")
    build = target.build(run / "model.onnx", run, precision="fp32")
    latency = target.measure(build)
    assert latency.method == "estimated" and not build.built_here
    inputs = np.zeros((2, 1, 16, 16), np.float32)
    write_latency_baseline(run, target=target, build=build, latency=latency, precision="fp32", inputs=inputs)
    return run


def test_an_estimated_device_built_engine_is_checked_by_estimate(jetson_run: Path) -> None:
    result = check_run(jetson_run)
    assert result.passed and result.timed == "estimated" and result.comparison("estimated latency").ok
    assert result.outputs_max_diff is None and any("outputs not compared" in n for n in result.notes)


def test_a_jetson_run_measured_over_ssh_is_checked_over_ssh_from_the_host(jetson_run: Path, monkeypatch) -> None:
    """It used to rebuild locally and raise NotRunnableHere (and the generated test skipped)."""
    _edit_baseline(jetson_run, method="measured", latency_source="ssh://me@orin", median_ms=1.0)
    timed = _fake_ssh(monkeypatch, 1.05, host="orin")
    result = check_run(jetson_run)
    assert result.passed and result.comparison("engine latency on orin (ssh)") is not None
    assert timed[0].onnx == jetson_run / "model.onnx" and not (jetson_run / "device_build").exists()


def test_a_run_this_machine_cannot_time_says_why_and_exits_3(jetson_run: Path, capsys) -> None:
    """Measured locally (on the Jetson itself), checked on a host without TensorRT."""
    _edit_baseline(jetson_run, method="measured", latency_source="local", median_ms=1.0)
    result = check_run(jetson_run)
    assert not result.passed and result.exit_code == EXIT_UNMEASURED and "tensorrt" in result.unmeasured
    assert check_main(jetson_run) == EXIT_UNMEASURED
    assert "LATENCY NOT CHECKED" in capsys.readouterr().out
    assert check_main(jetson_run, accept_unmeasured=True) == 0
    with pytest.raises(NotRunnableHere, match="on the device"):
        open_run(jetson_run)


# ---------------------------------------------------------------- judged as a ratio to a reference engine


class _SlowerSameOutputs(torch.nn.Module):
    """tiny-resnet plus a heavy branch whose contribution to the logits is 1e-7: the same outputs
    (to the check's tolerance), several times the work."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base
        self.heavy = torch.nn.Sequential(*[torch.nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1) for i in range(4)])
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        extra = self.fc(self.heavy(x).mean((2, 3)))
        return self.base(x) + 1e-7 * extra


@pytest.fixture(scope="module")
def ratio_run(tmp_path_factory) -> Path:
    """A run directory with a reference engine: the engine (tiny-resnet, FP32) and the reference
    (the same model) recorded at ratio 1.0 as verify records it."""
    from edgecompress.exporters import to_onnx
    from edgecompress.zoo import create_model
    run = tmp_path_factory.mktemp("ratio-run")
    torch.manual_seed(0)
    base = create_model("tiny-resnet").eval()
    onnx = to_onnx(base, run / "model.onnx", input_shape=(1, 16, 16))
    target = _fast_target()
    target = type(target)(target.profile.model_copy(update={"benchmark": target.profile.benchmark.model_copy(
        update={"compare_time_s": 3.0})}), probe=target._probe, latency_source="local")
    build = target.build(onnx, run, precision="fp32")
    target.build(onnx, run / "reference", precision="fp32")
    slow_onnx = to_onnx(_SlowerSameOutputs(base).eval(), run / "slow" / "model.onnx", input_shape=(1, 16, 16))
    target.build(slow_onnx, run / "slow", precision="fp32")
    inputs = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    write_latency_baseline(run, target=target, build=build, latency=target.measure(build), precision="fp32",
                           inputs=inputs, reference={"engine": "reference/model.xml", "onnx": "model.onnx",
                                                     "precision": "fp32",
                                                     "ratio": {"ratio": 1.0, "low": 0.99, "high": 1.01}})
    write_regression_test(run)
    return run


@pytest.fixture
def ratio_dir(ratio_run: Path, tmp_path: Path) -> Path:
    """A copy whose absolute baseline is a million times slower than the engine: these tests judge
    the ratio, not how busy this machine is."""
    dst = tmp_path / "run"
    shutil.copytree(ratio_run, dst)
    _edit_baseline(dst, median_ms=json.loads((dst / BASELINE_FILE).read_text())["median_ms"] * 1e6)
    return dst


def _ratio(result):
    return result.comparison("ratio to the reference engine")


@pytest.mark.slow
def test_an_unchanged_engine_passes_as_a_ratio_to_its_reference(ratio_dir: Path) -> None:
    result = check_run(ratio_dir)
    assert _ratio(result) is not None and _ratio(result).ok and result.passed, result.message()
    assert "side by side" in result.message() and result.comparison("engine latency").ok


@pytest.mark.slow
def test_a_slower_engine_with_the_same_outputs_fails(ratio_dir: Path) -> None:
    for suffix in (".xml", ".bin"):
        shutil.copy(ratio_dir / "slow" / f"model{suffix}", ratio_dir / f"model{suffix}")
    result = check_run(ratio_dir)
    assert result.outputs_ok, "the slower engine must give the same outputs"
    assert not _ratio(result).ok and "LATENCY REGRESSION" in result.message() and result.exit_code == 1


@pytest.mark.slow
def test_the_recorded_ratio_is_the_limit(ratio_dir: Path) -> None:
    _edit_baseline(ratio_dir, reference={**json.loads((ratio_dir / BASELINE_FILE).read_text())["reference"],
                                         "ratio": {"ratio": 0.5, "low": 0.49, "high": 0.51}})
    result = check_run(ratio_dir)
    assert not result.passed and "limit 0.575x" in result.message()


@pytest.mark.slow
def test_a_slowdown_of_engine_and_reference_alike_is_caught_on_the_same_device(ratio_dir: Path) -> None:
    """A runtime upgrade or a settings change slows both engines: the ratio cannot see it, the
    absolute limit on the run's own device does (here: a run a million times faster)."""
    _edit_baseline(ratio_dir, median_ms=json.loads((ratio_dir / BASELINE_FILE).read_text())["median_ms"] / 1e12)
    result = check_run(ratio_dir, tolerance=HUGE_TOLERANCE)
    assert _ratio(result).ok and not result.comparison("engine latency").ok and result.exit_code == 1


def test_a_runtime_missing_here_is_not_checked_and_says_so(run_dir: Path, monkeypatch) -> None:
    from edgecompress.errors import MissingBackendError
    from edgecompress.targets.openvino import OpenVINOTarget

    def missing(self, build):
        raise MissingBackendError("openvino", "openvino")
    monkeypatch.setattr(OpenVINOTarget, "runner", missing)
    result = check_run(run_dir)
    assert result.exit_code == EXIT_UNMEASURED and "openvino is not installed" in result.unmeasured
    assert check_run(run_dir, accept_unmeasured=True).exit_code == 0
