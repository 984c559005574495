"""latency_baseline.json and test_latency_regression.py: what the regression check compares against.

The baseline records how the run measured (target profile, runtime and version, device, threads,
precision, input shape) and what it got (median, p90, iterations), plus a few stored
input/output pairs (latency_baseline.npz) so a re-check can first prove it runs the same engine.
The whole profile is stored, so a re-check measures exactly like the run did even if the shipped
YAML changes later.

Reading and judging them is `compress check`'s (edgecompress/check/), which trusts nothing here.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
# the file names and schema are the check's contract (edgecompress/check reads these files)
from edgecompress.check.runfiles import (BASELINE_FILE, DEVICE_BASELINES_FILE, SAMPLES_FILE,  # noqa: F401
                                         SCHEMA, TEST_FILE)
from edgecompress.util import atomic_write, describe_device, host_name

STORED_SAMPLES = 4
_RUNTIME_PACKAGES = {"openvino": "openvino", "ort": "onnxruntime", "onnxruntime": "onnxruntime",
                     "tensorrt": "tensorrt"}


def write_latency_baseline(out_dir: str | Path, *, target: Any, build: Any, latency: Any,
                           precision: str, inputs: np.ndarray, outputs: np.ndarray | None = None,
                           run_dir: str | Path | None = None, reference: dict | None = None) -> Path:
    """Write latency_baseline.json (+ .npz with the stored input/output pairs) into `out_dir`.

    `target`, `build`, `latency`: the `Target`, its `BuildResult` and the `Latency` the verify stage
    measured. `inputs`: a batch of real validation inputs; the first few are stored. `outputs`: the
    engine's outputs for them (computed with `target.runner(build)` when None). Paths inside
    `build` are stored relative to `run_dir` (default `out_dir`), where the engine finally lives.
    """
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir
    samples = np.ascontiguousarray(inputs[:STORED_SAMPLES], dtype=np.float32)
    if outputs is None:
        outputs = target.runner(build)(samples)
    outputs = np.asarray(outputs)[: len(samples)]
    profile = target.profile
    record = {
        "schema": SCHEMA,
        "edgecompress": __version__,
        "created": _now(),
        "target": profile.name,
        "runtime": latency.runtime or profile.runtime,
        "runtime_version": runtime_version(profile.runtime),
        "device": latency.device or describe_device(),
        "host": host_name(),
        "method": latency.method,
        "latency_source": getattr(target, "latency_source", "local"),
        "precision": precision,
        "input_shape": [int(profile.batch), *map(int, samples.shape[1:])],
        "median_ms": float(latency.median_ms),
        "p90_ms": float(latency.p90_ms),
        "iterations": int(latency.iterations),
        "threads": profile.benchmark.threads,
        "warmup": profile.benchmark.warmup,
        "tolerance": float(profile.benchmark.tolerance),
        "engine": _engine_path(build, run_dir),
        "build": encode_paths(_as_dict(build), run_dir),
        "profile": profile.model_dump(mode="json"),
        "samples": {"file": SAMPLES_FILE, "count": len(samples)},
        # the reference engine stored with the run and the engine's speed-up over it, timed side by
        # side in the protocol: what a check judges (a ratio holds on a loaded machine, a time does not)
        "reference": None if reference is None else {k: v for k, v in reference.items() if k != "files"},
    }
    atomic_write(out_dir / SAMPLES_FILE, lambda tmp: _save_npz(tmp, samples, outputs))
    atomic_write(out_dir / BASELINE_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return out_dir / BASELINE_FILE


def write_regression_test(out_dir: str | Path) -> Path:
    """Write the standalone pytest file (reads latency_baseline.json next to it at test time)."""
    out_dir = Path(out_dir)
    baseline = json.loads((out_dir / BASELINE_FILE).read_text())
    text = _TEST_TEMPLATE.format(
        version=__version__, target=baseline["target"], precision=baseline["precision"],
        median=baseline["median_ms"], method=baseline["method"], device=baseline["device"],
        runtime=f"{baseline['runtime']} {baseline.get('runtime_version') or ''}".strip(),
        threads=baseline["threads"] if baseline["threads"] is not None else "runtime default",
        tolerance=baseline["tolerance"], pct=100 * baseline["tolerance"])
    atomic_write(out_dir / TEST_FILE, lambda tmp: tmp.write_text(text))
    return out_dir / TEST_FILE


# ---------------------------------------------------------------- runtime


def runtime_version(runtime: str) -> str | None:
    try:
        return metadata.version(_RUNTIME_PACKAGES.get(runtime, runtime))
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- BuildResult <-> JSON


def _as_dict(build: Any) -> dict:
    if dataclasses.is_dataclass(build):
        return {f.name: getattr(build, f.name) for f in dataclasses.fields(build)}
    if hasattr(build, "model_dump"):
        return build.model_dump()
    return dict(vars(build))


def encode_paths(value: Any, root: Path) -> Any:
    """JSON-safe copy of a BuildResult's fields; paths become {"path": relative to root}."""
    if isinstance(value, Path):
        return {"path": _relative(value, root)}
    if isinstance(value, dict):
        return {str(k): encode_paths(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_paths(v, root) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def decode_paths(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {"path"}:
            return root / value["path"]
        return {k: decode_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_paths(v, root) for v in value]
    return value


def _engine_path(build: Any, run_dir: Path) -> str:
    engine = getattr(build, "engine", None)
    if engine is None:
        raise TypeError(f"{type(build).__name__} has no 'engine' path")
    return _relative(Path(engine), run_dir)


def _relative(path: Path, root: Path) -> str:
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path.name  # outside the run directory: only the name can be meant
    if parts[:1] == (".staging",):
        # Written in a stage's staging folder (.staging/<stage>/...), moved to the run
        # directory when the stage finishes: the part after <stage>/ is where it ends up.
        parts = parts[2:]
    return Path(*parts).as_posix()


# ---------------------------------------------------------------- files


def _save_npz(tmp: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, inputs=inputs, outputs=outputs)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_TEST_TEMPLATE = '''"""Latency regression test for the engine in this run directory (written by edgecompress {version}).

    pytest path/to/this/run          # or: compress check path/to/this/run  (a table and an exit code)

Target {target}, precision {precision}, runtime {runtime}, threads {threads}.
Baseline: median {median:.4f} ms ({method}) on {device}.
The engine is timed the way the run timed it and compared with what the run recorded (limit: the
run's figure x (1 + {tolerance:g}), tolerance {pct:.0f} %, the profile's benchmark.tolerance):
measured here, side by side with the reference engine in reference/ (their ratio) and, on the
run's own device, its latency with a 95 % interval; measured over ssh, over ssh again; estimated,
with the same estimator. A machine that cannot time it FAILS the latency test with the reason,
unless EDGECOMPRESS_ACCEPT_UNMEASURED=1 is set (then it is skipped, and says why).

Environment overrides: EDGECOMPRESS_TOLERANCE=0.1 (fraction), EDGECOMPRESS_THREADS=N.
"""
import os
from pathlib import Path

import pytest

from edgecompress.check import check_run

RUN_DIR = Path(__file__).resolve().parent
ACCEPT_UNMEASURED = os.environ.get("EDGECOMPRESS_ACCEPT_UNMEASURED") == "1"


def _env(name, kind):
    value = os.environ.get(name)
    return kind(value) if value else None


@pytest.fixture(scope="module")
def result():
    return check_run(RUN_DIR, tolerance=_env("EDGECOMPRESS_TOLERANCE", float),
                     threads=_env("EDGECOMPRESS_THREADS", int), accept_unmeasured=ACCEPT_UNMEASURED)


def test_stored_outputs_match(result):
    if result.outputs_max_diff is None:
        pytest.skip("the engine does not run on this machine: outputs not compared")
    assert result.outputs_ok, (f"engine outputs changed: max abs diff {{result.outputs_max_diff:.3g}} on the "
                               f"stored inputs > {{result.outputs_tol:.3g}} allowed for {{result.precision}}")


def test_latency_not_regressed(result):
    print(result.message())
    if result.unmeasured is not None and ACCEPT_UNMEASURED:
        pytest.skip(result.message())
    assert result.latency_ok, result.message()
'''
