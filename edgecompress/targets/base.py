"""Target = profile + engine build + latency probe + runner (for accuracy checks on the artifact).

Runtimes (openvino, ort, tensorrt) register a Target subclass in RUNTIMES; latency probes
(openvino, ort, tensorrt, ssh, estimate) register a factory in PROBES. `get_target` (in
`targets/__init__.py`) joins them according to the profile's `latency` field or `--device`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from edgecompress.errors import InternalError, UserError
from edgecompress.exporters import is_qdq
from edgecompress.profiles import Benchmark, Profile
from edgecompress.registry import Registry
from edgecompress.util import describe_device
from edgecompress.targets.deploy import DEFAULT_SETTINGS, THREADS_KEY, Engine, open_engine

Runner = Callable[[np.ndarray], np.ndarray]
Probe = Callable[["BuildResult"], "Latency"]
RUNTIMES: Registry = Registry("runtime")
PROBES: Registry = Registry("latency probe")   # name -> factory(profile) -> Probe
MIN_ITERATIONS = 10  # below this a median is noise, whatever max_time says


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float          # NaN when the tool reports no p90 (benchmark_app prints one percentile)
    iterations: int        # timed runs (0 for an estimate)
    method: Literal["measured", "estimated"]
    runtime: str
    device: str

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class BuildResult:
    engine: Path                   # what ships: model.xml | model.plan | model.ort | the ONNX
    onnx: Path                     # the ONNX it was built from (QDQ for int8)
    precision: str
    runtime: str
    files: dict[str, Path] = field(default_factory=dict)   # artifact name -> path (engine, weights, script)
    built_here: bool = True        # False: the engine must be built on the device (build_engine.sh)
    notes: tuple[str, ...] = ()
    settings: dict | None = None   # runtime settings it is loaded with (targets/deploy.py); None: the defaults


class Target:
    """Base class; subclasses implement `build` and `runner` for one runtime."""
    runtime: str = ""

    def __init__(self, profile: Profile, *, probe: Probe, latency_source: str, notes: tuple[str, ...] = ()):
        self.profile = profile
        self.latency_source = latency_source   # "local" | "estimate" | "ssh://..."
        self.notes = notes                     # e.g. "latency is estimated: no TensorRT here"
        self._probe = probe

    @classmethod
    def local_available(cls) -> bool:
        """Whether this machine can build and time this runtime's engine."""
        return True

    def check_precision(self, precision: str) -> None:
        if precision not in self.profile.precisions:
            raise UserError(f"target {self.profile.name} does not support precision {precision!r}",
                            f"supported: {', '.join(self.profile.precisions)}")

    def check_source(self, onnx_path: Path, precision: str) -> None:
        """INT8 is built from a QDQ ONNX, a float precision from a float one."""
        if (precision == "int8") != is_qdq(onnx_path):
            raise UserError(f"precision {precision} needs {'a QDQ' if precision == 'int8' else 'a float'} ONNX,"
                            f" got {Path(onnx_path).name}", "pass model_int8.onnx for int8, model.onnx otherwise")

    def build(self, onnx_path: Path | str, out_dir: Path | str, *, precision: str) -> BuildResult:
        raise NotImplementedError

    def measure(self, build: BuildResult) -> Latency:
        return self._probe(build)

    def settings(self, build: BuildResult) -> dict:
        """The settings `build` is loaded with: its own, else its runtime's documented defaults
        (with the profile's thread count, when it names one)."""
        if build.settings is not None:
            return dict(build.settings)
        settings = dict(DEFAULT_SETTINGS.get(build.runtime, {}))
        if self.profile.benchmark.threads and build.runtime in THREADS_KEY:
            settings[THREADS_KEY[build.runtime]] = int(self.profile.benchmark.threads)
        return settings

    def open(self, build: BuildResult) -> Engine:
        """`build` opened by the one loader (targets/deploy.py) with its settings: a runner
        (`engine(x)`) and the caller the timing protocol interleaves (`engine.caller()`)."""
        return open_engine(build.engine, build.runtime, self.settings(build), batch=self.profile.batch)

    def runner(self, build: BuildResult) -> Runner:
        return self.open(build)

    def caller(self, build: BuildResult) -> Callable[[], object]:
        """One inference of the built engine on a fixed random input at the engine's shape, loaded
        as the user loads it: what `timing.compare` interleaves."""
        return self.open(build).caller()


def input_dims(onnx_path: Path | str, profile: Profile) -> tuple[int, ...]:
    """[batch, C, H, W] to time with: the profile's batch, C/H/W from the profile or the ONNX."""
    if profile.input_shape:
        return (profile.batch, *profile.input_shape)
    from edgecompress.exporters.common import need
    if Path(onnx_path).suffix == ".xml":   # an OpenVINO IR (NNCF's INT8)
        shape = need("openvino", "openvino").Core().read_model(str(onnx_path)).inputs[0].get_partial_shape()
        return (profile.batch, *(d.get_length() for d in list(shape)[1:]))
    onnx = need("onnx", "onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (profile.batch, *(d.dim_value for d in dims[1:]))


def random_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def time_calls(call: Callable[[], object], bench: Benchmark) -> list[float]:
    """Per-call wall times in ms: `warmup` untimed calls, then at least `iterations` calls AND at
    least `min_time_s` seconds (stopping early only past `max_time_s` with MIN_ITERATIONS done)."""
    for _ in range(bench.warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        elapsed = t1 - start
        if len(times) >= bench.iterations and elapsed >= bench.min_time_s:
            break
        if elapsed >= bench.max_time_s and len(times) >= MIN_ITERATIONS:
            break
    return times


def summarize(times_ms: list[float], *, runtime: str, device: str) -> Latency:
    arr = np.asarray(times_ms)
    return Latency(median_ms=float(np.median(arr)), p90_ms=float(np.percentile(arr, 90)),
                   iterations=len(times_ms), method="measured", runtime=runtime, device=device)


def host_cpu() -> str:
    """A readable name for this machine's CPU (for Latency.device): util.describe_device, the one place."""
    return describe_device()
