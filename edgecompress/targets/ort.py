"""ONNX Runtime target (x86 CPU with the ONNX itself, mobile with .ort): build, runner, local probe."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from edgecompress.exporters import onnx_to_ort, ort_session
from edgecompress.profiles import Profile
from edgecompress.targets.base import (PROBES, RUNTIMES, BuildResult, Latency, Probe, Runner, Target,
                                       host_cpu, input_dims, random_input, summarize, time_calls)


@RUNTIMES.register("ort")
class OrtTarget(Target):
    runtime = "ort"

    def build(self, onnx_path: Path | str, out_dir: Path | str, *, precision: str) -> BuildResult:
        self.check_precision(precision)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        self.check_source(onnx_path, precision)
        if self.profile.engine_format == "ort":
            engine = onnx_to_ort(onnx_path, out_dir / "model.ort")
        else:  # the ONNX is the engine; keep a copy in out_dir so the run directory is complete
            engine = out_dir / onnx_path.name
            if engine.resolve() != onnx_path.resolve():
                out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(onnx_path, engine)
        return BuildResult(engine=engine, onnx=onnx_path, precision=precision, runtime=self.runtime,
                           files={"engine": engine})

    def runner(self, build: BuildResult) -> Runner:
        sess = ort_session(build.engine, threads=self.profile.benchmark.threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    def caller(self, build: BuildResult) -> Callable[[], object]:
        return ort_call(build, self.profile)


def ort_call(build: BuildResult, profile: Profile) -> Callable[[], object]:
    """One `session.run` on a fixed random input, with the profile's intra-op thread count."""
    sess = ort_session(build.engine, threads=profile.benchmark.threads)
    feed = {sess.get_inputs()[0].name: random_input(input_dims(build.onnx, profile))}
    return lambda: sess.run(None, feed)


@PROBES.register("ort")
def ort_probe(profile: Profile) -> Probe:
    """Time `session.run` on this CPU with the profile's intra-op thread count."""
    def probe(build: BuildResult) -> Latency:
        times = time_calls(ort_call(build, profile), profile.benchmark)
        return summarize(times, runtime="ort", device=host_cpu())
    return probe
