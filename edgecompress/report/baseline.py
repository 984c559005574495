"""latency_baseline.json and test_latency_regression.py: what the regression check compares against.

The baseline records how the run measured (target profile, runtime and version, device, threads,
precision, input shape) and what it got (median, p90, iterations), plus a few stored
input/output pairs (latency_baseline.npz) so a re-check can first prove it runs the same engine.
The whole profile is stored, so a re-check measures exactly like the run did even if the shipped
YAML changes later.

When the run's latency was estimated (no device reachable), or when the check runs on another
device than the run did, there is nothing to compare against yet: the first measurement on that
device is recorded in latency_baseline.device.json (one entry per device) and later checks there
compare against it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
from edgecompress.errors import UserError

BASELINE_FILE = "latency_baseline.json"
SAMPLES_FILE = "latency_baseline.npz"
DEVICE_BASELINES_FILE = "latency_baseline.device.json"
TEST_FILE = "test_latency_regression.py"
SCHEMA = 1
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
        "host": platform.node(),
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
    _atomic(out_dir / SAMPLES_FILE, lambda tmp: _save_npz(tmp, samples, outputs))
    _atomic(out_dir / BASELINE_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
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
    _atomic(out_dir / TEST_FILE, lambda tmp: tmp.write_text(text))
    return out_dir / TEST_FILE


# ---------------------------------------------------------------- reading


def load_baseline(run_dir: Path) -> dict:
    """The run's baseline; UserError when `run_dir` is not a finished run directory."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory", "pass a run directory, e.g. runs/NAME")
    path = run_dir / BASELINE_FILE
    if not path.is_file():
        what = "a finished run" if (run_dir / "manifest.json").is_file() else "a run directory"
        raise UserError(f"{run_dir} is not {what}: it has no {BASELINE_FILE}",
                        "pass the directory of a run that finished its verify stage")
    try:
        baseline = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})", "re-run the verify stage") from exc
    if baseline.get("schema") != SCHEMA:
        raise UserError(f"{path} has schema {baseline.get('schema')!r}, expected {SCHEMA}",
                        "re-run the verify stage with this edgecompress version")
    return baseline


def load_samples(run_dir: Path, baseline: dict) -> tuple[np.ndarray, np.ndarray]:
    path = run_dir / baseline["samples"]["file"]
    if not path.is_file():
        raise UserError(f"stored samples {path} are missing", "re-run the verify stage")
    with np.load(path) as data:
        return data["inputs"], data["outputs"]


def device_baseline(run_dir: Path, device: str) -> dict | None:
    """The first measurement recorded on `device` by an earlier check, if any."""
    path = run_dir / DEVICE_BASELINES_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(device)


def record_device_baseline(run_dir: Path, device: str, entry: dict) -> Path:
    path = run_dir / DEVICE_BASELINES_FILE
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[device] = {**entry, "recorded": _now()}
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n"))
    return path


# ---------------------------------------------------------------- device and runtime


def describe_device() -> str:
    """CPU model from /proc/cpuinfo (or platform), plus the GPU name when torch sees one."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return f"{cpu} ({os.cpu_count()} logical CPUs)"


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


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_TEST_TEMPLATE = '''"""Latency regression test for the engine in this run directory (written by edgecompress {version}).

    pytest path/to/this/run          # or: compress check path/to/this/run  (a table, exit 1 on regression)

Target {target}, precision {precision}, runtime {runtime}, threads {threads}.
Baseline: median {median:.4f} ms ({method}) on {device}.
Where the engine runs here, the latency test times it side by side with the reference engine stored
in reference/ (the original at its float precision) in the timing protocol, and fails when its
latency ratio exceeds the run's ratio x (1 + {tolerance:g}) (tolerance {pct:.0f} %, the profile's
benchmark.tolerance): a ratio holds on a loaded machine as on a quiet one. On a remote device it
measures like the run did (up to 3 attempts, best median); on a device other than the baseline's
(or when the run's latency was estimated) the first run records its measurement as this device's
baseline (latency_baseline.device.json) and says so.

Environment overrides: EDGECOMPRESS_TOLERANCE=0.1 (fraction), EDGECOMPRESS_THREADS=N.
"""
import os
from pathlib import Path

import pytest

from edgecompress.errors import MissingBackendError
from edgecompress.report.check import NotRunnableHere, open_run

RUN_DIR = Path(__file__).resolve().parent


def _env(name, kind):
    value = os.environ.get(name)
    return kind(value) if value else None


@pytest.fixture(scope="module")
def run():
    try:
        return open_run(RUN_DIR, threads=_env("EDGECOMPRESS_THREADS", int))
    except (MissingBackendError, NotRunnableHere) as exc:
        pytest.skip(f"cannot run this engine here: {{exc}}")


def test_stored_outputs_match(run):
    diff, tol = run.compare_outputs()
    assert diff <= tol, (f"engine outputs changed: max abs diff {{diff:.3g}} on the stored inputs "
                         f"> {{tol:.3g}} allowed for {{run.baseline['precision']}}")


def test_latency_not_regressed(run):
    result = run.check_latency(tolerance=_env("EDGECOMPRESS_TOLERANCE", float))
    if result.unmeasurable:
        pytest.skip(result.message())
    print(result.message())
    assert result.latency_ok, result.message()
'''
