"""The engine of a run directory, timed the way the run timed it, against what the run recorded.

How the run timed its engine decides how the check times it (never a local measurement against
a device's, nor a measurement against an estimate):
- estimated (no device was reachable): the same estimator on the same files, engine and
  reference engine: estimates against estimates;
- measured here: the engine side by side with the stored reference engine in the timing protocol
  (their ratio against the run's, judged as the run judged it) and, on the same device, the
  engine's absolute latency with its 95 % interval against the run's (a slowdown that hits engine
  and reference alike, a runtime upgrade or a settings change, leaves the ratio unchanged);
- measured over ssh: over ssh again, with the device's own tool (no local build needed).
The device is named by what the latency probe reports ("<cpu> (local)" plus this host's name,
"<host> (ssh)"). A check that cannot time the engine (no runtime here, a device-built engine, a
first check on another machine without a reference engine) says why and does not pass unless the
user accepts it (`--accept-unmeasured`).
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgecompress.check.result import CheckResult, Comparison
from edgecompress.check.runfiles import (DEVICE_BASELINES_FILE, build_result, device_baselines, encoded_paths,
                                         inside, load_baseline, load_samples)
from edgecompress.errors import MissingBackendError, UserError
from edgecompress.util import describe_device, host_name, write_json

# Max |engine - stored| on the stored inputs, relative to max(1, max |stored output|). The same
# engine on the same machine reproduces its outputs almost bit for bit; the margins allow another
# CPU (AVX2 vs AVX-512 accumulation order, VNNI vs emulated INT8 rounding).
OUTPUT_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}
DEVICE_BUILD_DIR = "device_build"
ABSOLUTE_BLOCKS = 20     # fixed, never adaptive: the interval of their median is then exact
BLOCK_S = 0.25           # one block of the engine's calls: short against the machine's drift


class NotRunnableHere(UserError):
    """This machine cannot run or build the run's engine (e.g. a TensorRT plan without TensorRT)."""


def timing_mode(baseline: dict) -> str:
    """How the run timed its engine: "estimate", "ssh" or "local"."""
    if baseline["method"] != "measured":
        return "estimate"
    return "ssh" if str(baseline.get("latency_source", "local")).startswith("ssh://") else "local"


def run_device(baseline: dict) -> str:
    """The device the run timed on, as its probe names it. Over ssh that is "<host> (ssh)" whatever
    the run recorded (verify recorded this machine's CPU there)."""
    mode = timing_mode(baseline)
    if mode == "ssh":
        from edgecompress.targets.ssh import SSHDevice
        return f"{SSHDevice.parse(baseline['latency_source']).host} (ssh)"
    if mode == "estimate":
        return f"{baseline['profile'].device.name} (estimated)"   # as the estimate probe names it
    return baseline["device"]


def load_engine(run_dir: Path, baseline: dict, *, threads: int | None) -> tuple[Any, Any, list[str]]:
    """(target, build, notes): the run's engine, loaded with the run's stored profile and timed
    the way the run timed it. The one place a check loads an engine."""
    from edgecompress.targets import get_target
    profile = _with_threads(baseline["profile"], threads)
    source = {"estimate": "estimate", "ssh": baseline.get("latency_source"), "local": "local"}[timing_mode(baseline)]
    target = get_target(profile, device=source)
    build = build_result(run_dir, baseline)
    from edgecompress.targets.deploy import DEPLOY_FILE, read_deployment
    if (run_dir / DEPLOY_FILE).is_file():   # the settings the user's load() applies (targets/deploy.py)
        from dataclasses import replace
        build = replace(build, settings=read_deployment(run_dir).settings)
    notes = []
    if source == "local" and not build.built_here:
        build, note = _build_on_device(target, build, run_dir)
        notes.append(note)
    return target, build, notes


class RunEngine:
    """The engine of one run directory, loaded like the run loaded it."""

    def __init__(self, run_dir: Path, baseline: dict, target: Any, build: Any, notes: list[str]) -> None:
        self.run_dir, self.baseline, self.target, self.build = run_dir, baseline, target, build
        self.notes = notes
        self.mode = timing_mode(baseline)

    @property
    def runs_here(self) -> bool:
        return self.build.built_here and type(self.target).local_available()

    def compare_outputs(self) -> tuple[float, float] | None:
        """(max abs diff on the stored inputs, allowed); None when the engine does not run here."""
        inputs, expected = load_samples(self.run_dir, self.baseline)
        if not self.runs_here:
            return None
        with runtime_reads(self.build.engine, self.target.runtime):
            got = np.asarray(self.target.runner(self.build)(inputs))
        if got.shape != expected.shape:
            return math.inf, 0.0
        scale = max(1.0, float(np.abs(expected).max()))
        tol = OUTPUT_TOLERANCE.get(self.baseline["precision"], 1e-1) * scale
        return float(np.abs(got - expected).max()), tol

    def check_latency(self, *, tolerance: float | None = None, accept_unmeasured: bool = False) -> CheckResult:
        result = self._new_result(tolerance, accept_unmeasured)
        {"estimate": self._estimate, "ssh": self._remote, "local": self._local}[self.mode](result)
        return result

    # -- the three ways a run was timed ---------------------------------------------------------
    def _estimate(self, result: CheckResult) -> None:
        result.device = run_device(self.baseline)
        with runtime_reads(self.build.onnx, "estimator"):
            now = self.target.measure(self.build).median_ms
        result.comparisons.append(self._against(result, "estimated latency", "ms", self.baseline["median_ms"], now,
                                                how="the profile's estimator, as the run"))
        if self._reference():
            with runtime_reads(self._reference().onnx, "estimator"):
                ref = self.target.measure(self._reference()).median_ms
            result.comparisons.append(self._against(result, "estimated ratio to the reference engine", "x",
                                                    self._reference_ratio(), now / ref, how="estimates"))
        result.notes.append("the run's latency was estimated: compared with the same estimator's figures "
                            "(an estimate is never compared with a measurement)")

    def _remote(self, result: CheckResult) -> None:
        latency = self.target.measure(self.build)
        result.device = latency.device
        if latency.device != run_device(self.baseline):
            result.unmeasured = f"the probe reports device {latency.device!r}, the run timed on {run_device(self.baseline)!r}"
            return
        how = f"the device's tool, median of {latency.iterations} runs; no interval"
        result.comparisons.append(self._against(result, f"engine latency on {latency.device}", "ms",
                                                self.baseline["median_ms"], latency.median_ms, how=how))
        if self._reference():
            ref = self.target.measure(self._reference())
            result.comparisons.append(self._against(result, "ratio to the reference engine", "x",
                                                    self._reference_ratio(), latency.median_ms / ref.median_ms,
                                                    how="two medians from the device's tool; no interval"))

    def _local(self, result: CheckResult) -> None:
        if not self.runs_here:
            result.unmeasured = (f"this machine cannot run the run's {self.target.runtime} engine, which the run "
                                 f"timed on {result.run_device}")
            return
        result.device = describe_device()
        if self._reference():
            self._side_by_side(result)
        baseline_ms, source = self._absolute_baseline(result)
        median, low, high, blocks = self._time_absolute()
        if baseline_ms is None:
            self._record(median)
            if result.comparisons:
                result.notes.append(f"first check on this device: its latency ({median:.4f} ms) is recorded in "
                                    f"{DEVICE_BASELINES_FILE}; later checks here are held to it")
            else:
                result.unmeasured = (f"the run timed on {result.run_device} (host {self.baseline.get('host', '?')}), "
                                     f"this is {result.device} (host {host_name()}) and the run stored no reference "
                                     f"engine; this first measurement ({median:.4f} ms) is recorded in "
                                     f"{DEVICE_BASELINES_FILE} for the next check here")
            return
        result.comparisons.append(Comparison(
            what="engine latency", unit="ms", baseline=baseline_ms, now=median, low=low, high=high,
            limit=baseline_ms * (1 + result.tolerance), judged="interval",
            how=f"{blocks} blocks on {source}"))

    # -- pieces -------------------------------------------------------------------------------------
    def _side_by_side(self, result: CheckResult) -> None:
        from edgecompress.targets.timing import time_builds
        with runtime_reads(self._reference().engine, self.target.runtime):
            timing = time_builds(self.target, {"engine": self.build, "reference": self._reference()},
                                 reference="reference", max_time_s=self.target.profile.benchmark.compare_time_s,
                                 fresh=True)   # as verify timed the ratio it holds the engine to
        r = timing.ratios["engine"]
        result.comparisons.append(self._against(result, "ratio to the reference engine", "x", self._reference_ratio(),
                                                r.median, low=r.low, high=r.high,
                                                how=f"side by side, {timing.blocks} blocks, {timing.stopped}"))

    def _absolute_baseline(self, result: CheckResult) -> tuple[float | None, str]:
        """The absolute latency to hold the engine to here: the run's, when this is the run's
        device and host; else the first one an earlier check recorded on this device."""
        b = self.baseline
        if describe_device() == b["device"] and b.get("host") in (None, host_name()):
            return b["median_ms"], "the run's device"
        recorded = device_baselines(self.run_dir).get(_device_key())
        if recorded is None:
            return None, ""
        result.notes.append(f"another device than the run's ({b['device']}): the engine's latency is held to "
                            f"the first measurement recorded here ({recorded.get('recorded', '?')})")
        return float(recorded["median_ms"]), "this device, as first recorded here"

    def _time_absolute(self) -> tuple[float, float, float, int]:
        """(median, low, high, blocks) of the engine's mean ms per call over ABSOLUTE_BLOCKS blocks
        (fewer only past the profile's compare_time_s, never below MIN_BLOCKS)."""
        from edgecompress.targets.timing import MIN_BLOCKS, median_interval
        call, bench = self.target.caller(self.build), self.target.profile.benchmark
        for _ in range(max(1, bench.warmup)):
            t0 = time.perf_counter()
            call()
        runs = max(1, min(20, int(BLOCK_S // max(time.perf_counter() - t0, 1e-6))))
        start, blocks = time.perf_counter(), []
        while len(blocks) < ABSOLUTE_BLOCKS and (len(blocks) < MIN_BLOCKS or
                                                 time.perf_counter() - start < bench.compare_time_s):
            t0 = time.perf_counter()
            for _ in range(runs):
                call()
            blocks.append((time.perf_counter() - t0) * 1e3 / runs)
        median, low, high = median_interval(np.asarray(blocks))
        return median, low, high, len(blocks)

    def _record(self, median_ms: float) -> None:
        import datetime as dt
        records = device_baselines(self.run_dir)
        records[_device_key()] = {"median_ms": median_ms, "threads": self.target.profile.benchmark.threads,
                                  "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_json(self.run_dir / DEVICE_BASELINES_FILE, records)

    def _reference(self) -> Any:
        reference = self.baseline.get("reference")
        if not reference:
            return None
        from edgecompress.targets.base import BuildResult
        return BuildResult(engine=inside(self.run_dir, reference["engine"], self.run_dir),
                           onnx=inside(self.run_dir, reference["onnx"], self.run_dir),
                           precision=reference.get("precision", "fp32"), runtime=self.target.runtime,
                           settings=reference.get("settings"))   # loaded as the run timed it

    def _reference_ratio(self) -> float:
        return float(self.baseline["reference"]["ratio"]["ratio"])

    @staticmethod
    def _against(result: CheckResult, what: str, unit: str, baseline: float, now: float, *, how: str,
                 low: float | None = None, high: float | None = None) -> Comparison:
        return Comparison(what=what, unit=unit, baseline=baseline, now=now, low=low, high=high,
                          limit=baseline * (1 + result.tolerance), how=how)

    def _new_result(self, tolerance: float | None, accept_unmeasured: bool) -> CheckResult:
        b = self.baseline
        tol = float(tolerance if tolerance is not None else b["tolerance"])
        if not tol > 0:
            raise UserError(f"tolerance must be > 0, got {tol:g}", "pass a fraction, e.g. --tolerance 0.15")
        timed = {"estimate": "estimated", "ssh": "over ssh", "local": "here"}[self.mode]
        return CheckResult(run_dir=self.run_dir, target=b["target"], precision=b["precision"], timed=timed,
                           tolerance=tol, run_device=run_device(b), accept_unmeasured=accept_unmeasured,
                           threads=self.target.profile.benchmark.threads, baseline_threads=b.get("threads"),
                           notes=list(self.notes))


@contextmanager
def runtime_reads(path: Path, runtime: str) -> Iterator[None]:
    """A runtime (or the estimator) reading an engine file of the run directory: a damaged file is
    one UserError naming it, not the runtime's traceback, and the C++ frontends' attempts to
    parse it (OpenVINO tries each of its frontends and logs every failure to fd 2) stay quiet."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:   # the runtime's own parser or compiler on a file anyone may have changed
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
        cause = lines[0] if lines else type(exc).__name__
        raise UserError(f"{path}: {runtime} cannot load or run it: {cause}",
                        "re-run the build stage (compress ... --resume) or restore the run directory from a copy") from exc
    finally:
        os.close(saved)


def open_run(run_dir: str | Path, *, threads: int | None = None) -> RunEngine:
    """A run directory's engine, every file it reads checked first (UserError naming the file);
    MissingBackendError / NotRunnableHere when this machine cannot load it."""
    run_dir = Path(run_dir)
    baseline = load_baseline(run_dir)
    device_baselines(run_dir)            # a damaged one is refused now, before anything is timed
    for rel in dict.fromkeys([baseline["engine"], *encoded_paths(baseline["build"])]):
        path = inside(run_dir, rel, run_dir / "latency_baseline.json")
        if not path.is_file():
            raise UserError(f"{path} is missing: the run's engine is incomplete",
                            "re-run the build stage (compress ... --resume) or restore the file")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}", "pass a positive thread count")
    target, build, notes = load_engine(run_dir, baseline, threads=threads)
    if threads is not None and threads != baseline.get("threads"):
        notes.append(f"threads overridden: {threads} (the run used {baseline.get('threads') or 'the default'}).")
    return RunEngine(run_dir, baseline, target, build, notes)


def check_run(run_dir: str | Path, *, tolerance: float | None = None, threads: int | None = None,
              accept_unmeasured: bool = False) -> CheckResult:
    """Outputs, then latency, of a run directory's engine against what the run recorded. A run
    this machine cannot time gives a result that says why (and passes only when accepted)."""
    from edgecompress.targets.isolated import start_host
    start_host()   # before this process opens a runtime: the side-by-side timing runs there, as the run's did
    try:
        engine = open_run(run_dir, threads=threads)
        outputs = engine.compare_outputs()
        result = engine.check_latency(tolerance=tolerance, accept_unmeasured=accept_unmeasured)
    except (MissingBackendError, NotRunnableHere) as exc:   # this machine lacks the runtime
        return _unmeasured(Path(run_dir), str(exc), tolerance, accept_unmeasured)
    if outputs is None:
        result.notes.append("outputs not compared: the engine does not run on this machine")
    else:
        result.outputs_max_diff, result.outputs_tol = outputs
    return result


def _unmeasured(run_dir: Path, why: str, tolerance: float | None, accept: bool) -> CheckResult:
    b = load_baseline(run_dir)
    return CheckResult(run_dir=run_dir, target=b["target"], precision=b["precision"], timed="not at all",
                       tolerance=float(tolerance if tolerance is not None else b["tolerance"]),
                       run_device=run_device(b), unmeasured=why, accept_unmeasured=accept)


def _device_key() -> str:
    return f"{describe_device()} on {host_name()}"


def _with_threads(profile: Any, threads: int | None) -> Any:
    if threads is None:
        return profile
    bench = profile.benchmark.model_copy(update={"threads": threads})
    return profile.model_copy(update={"benchmark": bench})


def _build_on_device(target: Any, build: Any, run_dir: Path) -> tuple[Any, str]:
    """The run shipped an ONNX to be built where it is timed (no TensorRT where it ran): build it here."""
    if not type(target).local_available():
        raise NotRunnableHere(f"the run's {target.runtime} engine is built on the device and this machine "
                              f"cannot build or time {target.runtime}",
                              "run `compress check` (or pytest) on the device itself")
    built = target.build(build.onnx, run_dir / DEVICE_BUILD_DIR, precision=build.precision)
    return built, f"built the engine on this device into {DEVICE_BUILD_DIR}/ (the run could not build it)."
