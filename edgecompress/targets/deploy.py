"""The one loader: an engine file, its runtime and the runtime settings it ships with.

Every engine the tool runs or times is opened here: accuracy checks (`Target.runner`), the timing
protocol (`Target.caller`), verify, `compress check`, the generated regression test and the
snippet in report.html. The settings of the shipped engine are written beside it in deploy.json
and read back by `load(run_dir)`, so an engine is never timed with settings the user would not get:

    import edgecompress
    engine = edgecompress.load("runs/NAME")     # deploy.json: engine file, runtime, settings
    logits = engine(images)                     # NCHW float32, any batch (run in the engine's batch)

Settings are what the user's code passes beyond the runtime's documented defaults. OpenVINO:
`compile_model(model, "CPU", settings)` (PERFORMANCE_HINT=LATENCY, as OpenVINO documents for
latency; precision hint, pinning and threads only where measurement chose them); ONNX Runtime:
`SessionOptions` attributes by name, and session config entries (keys with a dot, e.g.
`session.intra_op.allow_spinning`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgecompress.errors import UserError
from edgecompress.exporters.common import existing, in_batches, need
from edgecompress.registry import Registry

DEPLOY_FILE = "deploy.json"
OPENERS: Registry = Registry("engine loader")   # runtime -> open(path, settings) -> (infer, input dims, handle)
# TensorRT's opener lives with its target and is imported when asked for: a process that only runs
# an engine imports neither PyTorch nor the other targets (edgecompress.targets is lazy)
OPENERS.register_from("tensorrt", "edgecompress.targets.tensorrt")
# What a user writes for each runtime when following its documentation for latency.
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {"openvino": {"PERFORMANCE_HINT": "LATENCY"}, "ort": {}}
THREADS_KEY = {"openvino": "INFERENCE_NUM_THREADS", "ort": "intra_op_num_threads"}


@dataclass(frozen=True)
class Deployment:
    """What deploy.json holds: the engine (relative to the run directory), its runtime, settings."""
    engine: str
    runtime: str
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str = ""
    input_shape: tuple[int, ...] = ()
    chosen: dict[str, Any] = field(default_factory=dict)   # how the settings were chosen (timings)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "runtime": self.runtime, "settings": self.settings,
                "precision": self.precision, "input_shape": list(self.input_shape), "chosen": self.chosen}


class Engine:
    """A loaded engine. `engine(x)`: outputs for an NCHW float32 batch of any size (a fixed-batch
    engine runs it in chunks); `engine.caller()`: one inference on a fixed random input at the
    engine's own shape, what the timing protocol interleaves."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], dims: tuple[int, ...], batch: int,
                 handle: object = None) -> None:
        self.infer, self.dims = infer, dims
        self.handle = handle   # the runtime's own object (compiled model, session), to inspect
        # a dynamic batch (-1 / 0) is timed at the profile's batch
        self.shape = tuple(int(d) if d and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(dims))
        self._run = in_batches(infer, dims[0] if dims and dims[0] > 0 else None)

    @property
    def fixed_batch(self) -> bool:
        return bool(self.dims) and self.dims[0] > 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(x, dtype=np.float32))

    def caller(self, seed: int = 0) -> Callable[[], object]:
        x = np.random.default_rng(seed).standard_normal(self.shape).astype(np.float32)
        return lambda: self.infer(x)


def open_engine(path: Path | str, runtime: str, settings: Mapping[str, Any] | None = None, *,
                batch: int = 1) -> Engine:
    """Open `path` in `runtime` with `settings` (None: the runtime's documented defaults)."""
    settings = DEFAULT_SETTINGS.get(runtime, {}) if settings is None else settings
    infer, dims, handle = OPENERS.get(runtime)(existing(path, f"{runtime} engine"), dict(settings))
    return Engine(infer, dims, batch, handle)


def load(run_dir: Path | str) -> Engine:
    """The engine a run shipped, opened exactly as the run timed it (deploy.json)."""
    deployment = read_deployment(run_dir)
    return open_engine(Path(run_dir) / deployment.engine, deployment.runtime, deployment.settings,
                       batch=deployment.input_shape[0] if deployment.input_shape else 1)


def read_deployment(run_dir: Path | str) -> Deployment:
    path = Path(run_dir) / DEPLOY_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist", "pass the directory of a run that finished its build stage")
    try:
        data = json.loads(path.read_text())
        deployment = Deployment(engine=str(data["engine"]), runtime=str(data["runtime"]),
                                settings=dict(data.get("settings") or {}), precision=str(data.get("precision", "")),
                                input_shape=tuple(int(d) for d in data.get("input_shape") or ()),
                                chosen=dict(data.get("chosen") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc})", "re-run the build stage") from exc
    engine = Path(deployment.engine)
    if engine.is_absolute() or ".." in engine.parts:
        raise UserError(f"{path} names an engine outside the run directory ({engine})", "re-run the build stage")
    return deployment


def write_deployment(dst: Path, deployment: Deployment) -> Path:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_text(json.dumps(deployment.to_dict(), indent=2) + "\n")
    tmp.replace(dst)
    return dst


@OPENERS.register("openvino")
def _openvino(path: Path, settings: dict) -> tuple[Callable, tuple[int, ...], object]:
    ov = need("openvino", "openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", settings)
    shape = compiled.inputs[0].get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    # called as OpenVINO documents it: `compiled(x)` shares the input with the request (its
    # default; `create_infer_request().infer(x)` copies it: NNCF INT8 ResNet-20 1.12x slower in
    # fresh processes, benchmarks/openvino_call.py) and returns a copy of each output
    return (lambda x: compiled(x)[0]), dims, compiled


@OPENERS.register("ort")
def _ort(path: Path, settings: dict) -> tuple[Callable, tuple[int, ...], object]:
    ort = need("onnxruntime", "ort")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in settings.items():
        if "." in key:    # a session config entry, e.g. session.intra_op.allow_spinning
            opts.add_session_config_entry(key, str(value))
        elif key == "graph_optimization_level":
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        elif key == "execution_mode":
            opts.execution_mode = getattr(ort.ExecutionMode, value)
        else:
            setattr(opts, key, value)
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in inp.shape)
    return (lambda x: sess.run(None, {inp.name: x})[0]), dims, sess

