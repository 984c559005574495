"""Reading a run directory for `compress check`, trusting nothing in it.

A run directory is files anyone may have edited, truncated or planted. Everything a check reads
is validated before anything is timed or written: each problem is one UserError naming the file
and the cause (the CLI prints it and exits 2), never a KeyError, a zipfile traceback or a path
outside the run directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import util
from edgecompress.errors import UserError
from edgecompress.profiles import SSH_URL

# What verify writes (report/baseline.py) and a check reads: the contract between them.
BASELINE_FILE = "latency_baseline.json"
SAMPLES_FILE = "latency_baseline.npz"
DEVICE_BASELINES_FILE = "latency_baseline.device.json"
TEST_FILE = "test_latency_regression.py"
SCHEMA = 1
REDO = "re-run the verify stage (compress ... --resume) or restore the run directory from a copy"
# key -> accepted types, for what every check reads from latency_baseline.json
REQUIRED = {"target": str, "precision": str, "method": str, "device": str, "median_ms": (int, float),
            "tolerance": (int, float), "engine": str, "build": dict, "profile": dict, "samples": dict}
OPTIONAL = {"latency_source": str, "host": str, "threads": (int, type(None)), "p90_ms": (int, float, type(None)),
            "reference": (dict, type(None)), "runtime": str}


def load_baseline(run_dir: Path) -> dict:
    """latency_baseline.json, checked: its keys, types, stored profile and every path in it."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory", "pass a run directory, e.g. runs/NAME")
    path = run_dir / BASELINE_FILE
    if not path.is_file():
        what = "a finished run" if (run_dir / "manifest.json").is_file() else "a run directory"
        raise UserError(f"{run_dir} is not {what}: it has no {BASELINE_FILE}",
                        "pass the directory of a run that finished its verify stage")
    baseline = read_json(path)
    if not isinstance(baseline, dict):
        raise UserError(f"{path}: not a JSON object (a {type(baseline).__name__})", REDO)
    if baseline.get("schema") != SCHEMA:
        raise UserError(f"{path}: schema {baseline.get('schema')!r}, expected {SCHEMA}", REDO)
    _check_keys(path, baseline)
    if baseline["method"] not in ("measured", "estimated"):
        raise UserError(f"{path}: method {baseline['method']!r} is neither 'measured' nor 'estimated'", REDO)
    if not (math.isfinite(baseline["median_ms"]) and baseline["median_ms"] > 0):
        raise UserError(f"{path}: median_ms {baseline['median_ms']!r} is not a positive number", REDO)
    baseline["profile"] = stored_profile(path, baseline["profile"])
    for rel in run_paths(baseline):
        inside(run_dir, rel, path)
    return baseline


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})", REDO) from exc


def stored_profile(path: Path, data: dict) -> Any:
    from pydantic import ValidationError

    from edgecompress.profiles import Profile
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "profile"
        raise UserError(f"{path}: bad stored profile: {where}: {first['msg']}", REDO) from exc


def run_paths(baseline: dict) -> list[str]:
    """Every path the baseline names, relative to the run directory as stored."""
    reference = baseline.get("reference") or {}
    paths = [baseline["engine"], *encoded_paths(baseline["build"]), baseline["samples"].get("file")]
    paths += [reference.get("engine"), reference.get("onnx")] if reference else []
    return [p for p in dict.fromkeys(paths)]


def inside(run_dir: Path, rel: Any, source: Path) -> Path:
    """`run_dir / rel`, refusing an absolute path, a `..` or a link that leads out of the run."""
    return util.inside(run_dir, rel, source, REDO)


def load_samples(run_dir: Path, baseline: dict) -> tuple[np.ndarray, np.ndarray]:
    """The stored inputs and the engine's outputs for them (latency_baseline.npz), checked."""
    path = inside(run_dir, baseline["samples"].get("file"), run_dir / BASELINE_FILE)
    if not path.is_file():
        raise UserError(f"stored samples {path} are missing", REDO)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("inputs", "outputs") if k not in data.files]
            if missing:
                raise UserError(f"{path}: damaged: no {' and no '.join(missing)} array", REDO)
            inputs, outputs = data["inputs"], data["outputs"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: damaged: {_first_sentence(exc)}", REDO) from exc
    if inputs.dtype.kind != "f" or outputs.dtype.kind != "f" or len(inputs) != len(outputs) or not len(inputs):
        raise UserError(f"{path}: damaged: inputs {inputs.dtype}{inputs.shape}, outputs "
                        f"{outputs.dtype}{outputs.shape}", REDO)
    return inputs, outputs


def device_baselines(run_dir: Path) -> dict:
    """latency_baseline.device.json (device -> its first measurement), checked; {} when absent."""
    path = run_dir / DEVICE_BASELINES_FILE
    if not path.is_file():
        return {}
    records = read_json(path)
    ok = isinstance(records, dict) and all(
        isinstance(r, dict) and isinstance(r.get("median_ms"), (int, float)) and r["median_ms"] > 0
        for r in records.values())
    if not ok:
        raise UserError(f"{path}: not a map of device -> {{median_ms, ...}}",
                        f"delete {path.name}: the next check records this device's baseline again")
    return records


def build_result(run_dir: Path, baseline: dict) -> Any:
    """The run's BuildResult from its stored fields (paths already checked by load_baseline)."""
    from edgecompress.targets.base import BuildResult
    path = run_dir / BASELINE_FILE
    fields = {f.name: f for f in dataclasses.fields(BuildResult)}
    stored = baseline["build"]
    unknown = sorted(set(stored) - set(fields))
    missing = sorted(k for k in ("engine", "onnx", "precision", "runtime") if k not in stored)
    if unknown or missing:
        raise UserError(f"{path}: build has {'unknown keys ' + ', '.join(unknown) if unknown else ''}"
                        f"{'; ' if unknown and missing else ''}{'no ' + ', '.join(missing) if missing else ''}", REDO)
    values = _decode(stored, run_dir, path)
    return BuildResult(**{k: tuple(v) if "tuple" in str(fields[k].type) and isinstance(v, list) else v
                          for k, v in values.items()})


def _first_sentence(exc: Exception) -> str:
    """numpy's own advice ("If you trust the file you can load it unsafely ...") is not for a run file."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _check_keys(path: Path, baseline: dict) -> None:
    problems = [f"no {k}" for k in REQUIRED if k not in baseline]
    for key, kinds in {**REQUIRED, **OPTIONAL}.items():
        value = baseline.get(key)
        if key in baseline and (not isinstance(value, kinds) or isinstance(value, bool)):
            problems.append(f"{key} is {type(value).__name__}")
    source = baseline.get("latency_source", "local")
    if isinstance(source, str) and source not in ("local", "estimate") and not SSH_URL.match(source):
        # an ssh address whose user or host starts with "-" would reach ssh as an option
        problems.append(f"latency_source {source!r} is not local, estimate or ssh://user@host[:port]")
    reference = baseline.get("reference")
    if isinstance(reference, dict):
        ratio = reference.get("ratio")
        if not (isinstance(reference.get("engine"), str) and isinstance(reference.get("onnx"), str)
                and isinstance(ratio, dict) and isinstance(ratio.get("ratio"), (int, float)) and ratio["ratio"] > 0):
            problems.append("reference lacks engine, onnx or a positive ratio")
        if not isinstance(reference.get("settings"), (dict, type(None))):
            problems.append("reference settings is not a mapping")
    if problems:
        raise UserError(f"{path}: {', '.join(problems)}", REDO)


def encoded_paths(encoded: Any) -> list[str]:
    if isinstance(encoded, dict):
        if set(encoded) == {"path"}:
            return [encoded["path"]]
        return [p for v in encoded.values() for p in encoded_paths(v)]
    if isinstance(encoded, list):
        return [p for v in encoded for p in encoded_paths(v)]
    return []


def _decode(value: Any, run_dir: Path, source: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {"path"}:
            return inside(run_dir, value["path"], source)
        return {k: _decode(v, run_dir, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, run_dir, source) for v in value]
    return value
