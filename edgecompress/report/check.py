"""`compress check RUN_DIR` and the generated regression test: is the engine still as fast?

Both load the engine exactly as the run did (the profile stored in latency_baseline.json, through
`get_target(...)`), check that the stored outputs still come out, and re-measure. Where the run
stored a reference engine (the original at its float precision) and the engine runs here, the
engine is judged the way the run judged it: timed side by side with the reference in the timing
protocol (targets/timing.py), its latency ratio against the run's ratio x (1 + tolerance). A
ratio holds on a loaded machine as on a quiet one; an absolute time recorded once does not.
Otherwise (a remote device, a run without a reference) it measures like the run did and, above
the limit, again, up to MAX_ATTEMPTS times, keeping the best median.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.report.baseline import (decode_paths, describe_device, device_baseline, load_baseline, load_samples,
                                          record_device_baseline)

MAX_ATTEMPTS = 3
# Max |engine - stored| on the stored inputs, relative to max(1, max |stored output|). The same
# engine on the same machine reproduces its outputs almost bit for bit; the margins allow another
# CPU (AVX2 vs AVX-512 accumulation order, VNNI vs emulated INT8 rounding).
OUTPUT_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}
DEVICE_BUILD_DIR = "device_build"


class NotRunnableHere(UserError):
    """This machine cannot run or build the run's engine (e.g. a TensorRT plan without TensorRT)."""


@dataclass
class CheckResult:
    """Baseline vs now for one run directory; `passed` is what the exit code says."""
    run_dir: Path
    target: str
    precision: str
    device: str                      # where it was measured now
    baseline_device: str
    baseline_source: str             # "run" | "recorded on this device <date>" | "recorded now"
    baseline_ms: float | None
    baseline_p90_ms: float | None
    tolerance: float
    medians_ms: list[float] = field(default_factory=list)   # one per attempt
    p90_ms: float | None = None
    iterations: int = 0
    threads: int | None = None
    baseline_threads: int | None = None
    outputs_max_diff: float | None = None
    outputs_tol: float | None = None
    recorded: bool = False           # this check recorded the device baseline (nothing compared)
    unmeasurable: bool = False       # no real measurement possible here (estimate only)
    notes: list[str] = field(default_factory=list)
    ratio_baseline: float | None = None   # the run's engine / reference latency ratio
    ratio_now: dict | None = None         # the same now, side by side: {ratio, low, high}

    @property
    def now_ms(self) -> float | None:
        return min(self.medians_ms) if self.medians_ms else None

    @property
    def limit_ms(self) -> float | None:
        return None if self.baseline_ms is None else self.baseline_ms * (1 + self.tolerance)

    @property
    def latency_ok(self) -> bool:
        if self.recorded or self.unmeasurable:
            return True
        if self.ratio_now is not None:
            return self.ratio_now["ratio"] <= self.ratio_baseline * (1 + self.tolerance)
        return self.now_ms is not None and self.now_ms <= self.limit_ms

    @property
    def outputs_ok(self) -> bool:
        return self.outputs_max_diff is None or self.outputs_max_diff <= self.outputs_tol

    @property
    def passed(self) -> bool:
        return self.latency_ok and self.outputs_ok

    def message(self) -> str:
        """One paragraph a person reads: baseline, now, tolerance, verdict."""
        if self.unmeasurable:
            return " ".join(["latency not checked: nothing can measure this engine here.", *self.notes])
        if self.ratio_now is not None:
            r, verdict = self.ratio_now, "latency ok" if self.latency_ok else "LATENCY REGRESSION"
            return (f"{verdict}: the engine runs at {r['ratio']:.3f}x [{r['low']:.3f}, {r['high']:.3f}] of the reference "
                    f"engine's latency, side by side; limit {self.ratio_baseline * (1 + self.tolerance):.3f}x = the "
                    f"run's {self.ratio_baseline:.3f}x x (1 + tolerance {self.tolerance:g}) [{self.target}, "
                    f"{self.precision}, {self.device}]")
        tries = ", ".join(f"{m:.4f}" for m in self.medians_ms)
        now = f"now {self.now_ms:.4f} ms (best median of {len(self.medians_ms)} attempt(s): {tries} ms)"
        if self.recorded:
            return f"first run on {self.device}: recorded {now} as this device's baseline; nothing to compare yet."
        verdict = "LATENCY REGRESSION" if not self.latency_ok else "latency ok"
        sign = ">" if not self.latency_ok else "<="
        return (f"{verdict}: {now} {sign} limit {self.limit_ms:.4f} ms = baseline {self.baseline_ms:.4f} ms "
                f"x (1 + tolerance {self.tolerance:g}) [baseline: {self.baseline_source}; {self.target}, "
                f"{self.precision}, {self.device}]")


class RunEngine:
    """The engine of one run directory, loaded like the run loaded it."""

    def __init__(self, run_dir: Path, baseline: dict, target: Any, build: Any, notes: list[str]) -> None:
        self.run_dir, self.baseline, self.target, self.build = run_dir, baseline, target, build
        self.notes = notes

    def compare_outputs(self) -> tuple[float, float]:
        """(max abs diff on the stored inputs, allowed) for this engine vs the stored outputs."""
        inputs, expected = load_samples(self.run_dir, self.baseline)
        got = np.asarray(self.target.runner(self.build)(inputs))
        if got.shape != expected.shape:
            return math.inf, 0.0
        scale = max(1.0, float(np.abs(expected).max()))
        tol = OUTPUT_TOLERANCE.get(self.baseline["precision"], 1e-1) * scale
        return float(np.abs(got - expected).max()), tol

    def check_latency(self, *, tolerance: float | None = None, attempts: int = MAX_ATTEMPTS) -> CheckResult:
        result = self._new_result(tolerance)
        reference = self.baseline.get("reference")
        if reference and self.target.latency_source == "local" and self.build.built_here:
            return self._check_ratio(result, reference)
        latency = self.target.measure(self.build)
        if latency.method != "measured":
            result.unmeasurable = True
            result.notes.append(f"{self.target.profile.name} latency can only be estimated on this "
                                f"machine; run the check on the device ({self.baseline['device']}).")
            return result
        result.device = latency.device
        reference = self._reference(result, latency.device)
        self._add(result, latency)
        while reference is not None and len(result.medians_ms) < attempts and not result.latency_ok:
            self._add(result, self.target.measure(self.build))  # above the limit: noise or real?
        if reference is None:
            self._record(result, latency)
        elif len(result.medians_ms) > 1:
            result.notes.append(f"the first measurement was above the limit; measured "
                                f"{len(result.medians_ms)} times and kept the best median.")
        return result

    def _check_ratio(self, result: CheckResult, reference: dict) -> CheckResult:
        """The engine and the stored reference engine, side by side in the protocol."""
        from edgecompress.targets import BuildResult
        from edgecompress.targets.timing import time_builds
        ref = BuildResult(engine=self.run_dir / reference["engine"], onnx=self.run_dir / reference["onnx"],
                          precision=reference["precision"], runtime=self.target.runtime)
        timing = time_builds(self.target, {"engine": self.build, "reference": ref}, reference="reference",
                             max_time_s=self.target.profile.benchmark.compare_time_s)
        result.device = describe_device()
        result.ratio_baseline, result.ratio_now = reference["ratio"]["ratio"], timing.ratios["engine"].to_dict()
        result.medians_ms = [timing.ms["engine"]]
        result.iterations = timing.blocks * timing.runs_per_block
        result.notes.append(f"timed side by side with the reference engine ({timing.blocks} blocks, {timing.stopped})")
        return result

    def _new_result(self, tolerance: float | None) -> CheckResult:
        b = self.baseline
        tol = float(tolerance if tolerance is not None else b["tolerance"])
        if tol <= 0:
            raise UserError(f"tolerance must be > 0, got {tol:g}", "pass a fraction, e.g. --tolerance 0.15")
        return CheckResult(run_dir=self.run_dir, target=b["target"], precision=b["precision"],
                           device="", baseline_device=b["device"], baseline_source="run",
                           baseline_ms=b["median_ms"], baseline_p90_ms=b.get("p90_ms"), tolerance=tol,
                           threads=self.target.profile.benchmark.threads, baseline_threads=b.get("threads"),
                           notes=list(self.notes))

    def _reference(self, result: CheckResult, device: str) -> dict | None:
        """What to compare against here: the run's measurement on its own device, else the first
        measurement recorded on this device; None when this is the first run here."""
        b = self.baseline
        if b["method"] == "measured" and device == b["device"]:
            return b
        recorded = device_baseline(self.run_dir, device)
        why = ("the run's latency was estimated" if b["method"] != "measured"
               else f"the run measured on {b['device']}")
        if recorded is None:
            result.baseline_ms = result.baseline_p90_ms = None
            result.notes.append(f"{why}; this is the first check on {device}.")
            return None
        result.baseline_ms, result.baseline_p90_ms = recorded["median_ms"], recorded.get("p90_ms")
        result.baseline_source = f"recorded on this device {recorded.get('recorded', '')}".strip()
        result.notes.append(f"{why}; comparing with the first measurement recorded on this device.")
        return recorded

    def _record(self, result: CheckResult, latency: Any) -> None:
        record_device_baseline(self.run_dir, latency.device, {
            "median_ms": latency.median_ms, "p90_ms": _finite(latency.p90_ms),
            "iterations": latency.iterations, "runtime": latency.runtime,
            "threads": self.target.profile.benchmark.threads})
        result.recorded = True
        result.baseline_source = "recorded now"

    @staticmethod
    def _add(result: CheckResult, latency: Any) -> None:
        result.medians_ms.append(latency.median_ms)
        if latency.median_ms <= min(result.medians_ms):
            result.p90_ms, result.iterations = _finite(latency.p90_ms), latency.iterations


def open_run(run_dir: str | Path, *, threads: int | None = None) -> RunEngine:
    """Load a run directory's engine with the run's own profile (`threads` overrides it).

    Raises UserError when `run_dir` is not a run or its engine is missing, MissingBackendError
    when this machine lacks the runtime.
    """
    run_dir = Path(run_dir)
    baseline = load_baseline(run_dir)
    for rel in dict.fromkeys([baseline["engine"], *_paths(baseline["build"])]):
        path = run_dir / rel
        if not path.is_file():
            raise UserError(f"{path} is missing: the run's engine is incomplete",
                            "re-run the build stage (compress ... --resume) or restore the file")
    profile = _profile(baseline, threads)
    from edgecompress.targets import get_target
    notes: list[str] = []
    # Measure where the run measured (local or the same ssh device); an estimated baseline has no
    # device measurement to keep, so measure on whatever device this is.
    source = baseline.get("latency_source") if baseline["method"] == "measured" else "local"
    target = get_target(profile, device=source)
    build = _build_result(run_dir, baseline)
    if not build.built_here:
        build, note = _build_on_device(target, build, run_dir)
        notes.append(note)
    if threads is not None and threads != baseline.get("threads"):
        notes.append(f"threads overridden: {threads} (the run used {baseline.get('threads') or 'the default'}).")
    return RunEngine(run_dir, baseline, target, build, notes)


def check_run(run_dir: str | Path, *, tolerance: float | None = None, threads: int | None = None) -> CheckResult:
    """Outputs, then latency, of a run directory's engine against its baseline."""
    engine = open_run(run_dir, threads=threads)
    diff, tol = engine.compare_outputs()
    result = engine.check_latency(tolerance=tolerance)
    result.outputs_max_diff, result.outputs_tol = diff, tol
    return result


# ---------------------------------------------------------------- printing and CLI


def print_check(result: CheckResult, *, console: Any = None) -> None:
    """The rich table of baseline vs now, then the verdict line."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    table = Table(title=f"compress check {result.run_dir}", title_justify="left")
    for col, justify in (("", "left"), ("baseline", "right"), ("now", "right"), ("limit / verdict", "left")):
        table.add_column(col, justify=justify)
    for row in _rows(result):
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    style = "bold green" if result.passed else "bold red"
    console.print(result.message(), style=style, highlight=False, markup=False)
    if not result.outputs_ok:
        console.print(f"OUTPUTS CHANGED: max abs diff {result.outputs_max_diff:.3g} > "
                      f"{result.outputs_tol:.3g} on the stored inputs", style="bold red", highlight=False)


def check_main(run_dir: str | Path, *, tolerance: float | None = None, threads: int | None = None) -> int:
    """CLI body of `compress check`: prints the table; 0 ok, 1 regression. UserErrors propagate
    (the CLI prints them and exits 2)."""
    result = check_run(run_dir, tolerance=tolerance, threads=threads)
    print_check(result)
    return 0 if result.passed else 1


def _rows(r: CheckResult) -> list[tuple[str, str, str, str]]:
    from rich.markup import escape  # device names may hold [brackets]
    lat_verdict = ("not measurable here" if r.unmeasurable else "recorded as baseline" if r.recorded
                   else f"<= {r.limit_ms:.4f} ms: {'[green]ok' if r.latency_ok else '[red]REGRESSION'}")
    out_verdict = ("not checked" if r.outputs_max_diff is None else
                   f"<= {r.outputs_tol:.3g}: {'[green]ok' if r.outputs_ok else '[red]CHANGED'}")
    if r.ratio_now is not None:
        now = r.ratio_now
        lat_verdict = (f"<= {r.ratio_baseline * (1 + r.tolerance):.3f}x: "
                       f"{'[green]ok' if r.latency_ok else '[red]REGRESSION'}")
        return [
            ("latency / reference engine", f"{r.ratio_baseline:.3f}x", f"{now['ratio']:.3f}x "
             f"[{now['low']:.3f}, {now['high']:.3f}]", lat_verdict),
            ("engine median (ms), side by side", _f(r.baseline_ms), _f(r.now_ms), "not judged: the machine drifts"),
            ("tolerance", f"{r.tolerance:g}", "", f"limit = the run's ratio x {1 + r.tolerance:g}"),
            ("runs", "", str(r.iterations), ""),
            ("threads", _t(r.baseline_threads), _t(r.threads), ""),
            ("device", escape(r.baseline_device), escape(r.device), escape(r.baseline_source)),
            ("outputs max abs diff", "0", _f(r.outputs_max_diff, ".3g"), out_verdict),
        ]
    return [
        ("median latency (ms)", _f(r.baseline_ms), _f(r.now_ms), lat_verdict),
        ("p90 latency (ms)", _f(r.baseline_p90_ms), _f(r.p90_ms), ""),
        ("attempts (medians, ms)", "", ", ".join(f"{m:.4f}" for m in r.medians_ms), f"up to {MAX_ATTEMPTS}"),
        ("tolerance", f"{r.tolerance:g}", "", f"limit = baseline x {1 + r.tolerance:g}"),
        ("iterations", "", str(r.iterations), ""),
        ("threads", _t(r.baseline_threads), _t(r.threads), ""),
        ("device", escape(r.baseline_device), escape(r.device), escape(r.baseline_source)),
        ("outputs max abs diff", "0", _f(r.outputs_max_diff, ".3g"), out_verdict),
    ]


# ---------------------------------------------------------------- helpers


def _profile(baseline: dict, threads: int | None) -> Any:
    from edgecompress.profiles import Profile
    profile = Profile.model_validate(baseline["profile"])
    if threads is None:
        return profile
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}", "pass a positive thread count")
    bench = profile.benchmark.model_copy(update={"threads": threads})
    return profile.model_copy(update={"benchmark": bench})


def _build_result(run_dir: Path, baseline: dict) -> Any:
    from edgecompress.targets.base import BuildResult
    fields = decode_paths(baseline["build"], run_dir)
    tuples = {f.name for f in dataclasses.fields(BuildResult) if "tuple" in str(f.type)}
    return BuildResult(**{k: tuple(v) if k in tuples else v for k, v in fields.items()})


def _build_on_device(target: Any, build: Any, run_dir: Path) -> tuple[Any, str]:
    """The run shipped an ONNX to be built on the device (no TensorRT where it ran): build it here."""
    if not type(target).local_available():
        raise NotRunnableHere(f"the run's {target.runtime} engine is built on the device and this machine "
                              f"cannot build or time {target.runtime}",
                              "run `compress check` (or pytest) on the device itself")
    built = target.build(build.onnx, run_dir / DEVICE_BUILD_DIR, precision=build.precision)
    return built, f"built the engine on this device into {DEVICE_BUILD_DIR}/ (the run could not build it)."


def _paths(encoded: Any) -> list[str]:
    """Every relative path stored in an encoded BuildResult."""
    if isinstance(encoded, dict):
        if set(encoded) == {"path"}:
            return [encoded["path"]]
        return [p for v in encoded.values() for p in _paths(v)]
    if isinstance(encoded, list):
        return [p for v in encoded for p in _paths(v)]
    return []


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _f(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _t(threads: int | None) -> str:
    return "default" if threads is None else str(threads)
