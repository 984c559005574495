"""OpenVINO target (x86 CPU): IR build, runner and local latency probe."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from edgecompress.exporters import compile_openvino, onnx_to_openvino
from edgecompress.profiles import Profile
from edgecompress.targets.base import (PROBES, RUNTIMES, BuildResult, Latency, Probe, Runner, Target,
                                       host_cpu, input_dims, random_input, summarize, time_calls)


@RUNTIMES.register("openvino")
class OpenVINOTarget(Target):
    runtime = "openvino"

    def build(self, onnx_path: Path | str, out_dir: Path | str, *, precision: str) -> BuildResult:
        self.check_precision(precision)
        onnx_path, xml = Path(onnx_path), Path(out_dir) / "model.xml"
        if onnx_path.suffix == ".xml" and precision == "int8":   # an INT8 IR NNCF wrote: it is the engine
            xml.parent.mkdir(parents=True, exist_ok=True)
            if onnx_path.resolve() != xml.resolve():
                shutil.copy(onnx_path, xml)
                shutil.copy(onnx_path.with_suffix(".bin"), xml.with_suffix(".bin"))
        else:
            self.check_source(onnx_path, precision)
            onnx_to_openvino(onnx_path, xml, fp16=(precision == "fp16"))
        return BuildResult(engine=xml, onnx=onnx_path, precision=precision, runtime=self.runtime,
                           files={"engine": xml, "weights": xml.with_suffix(".bin")})

    def runner(self, build: BuildResult) -> Runner:
        b = self.profile.benchmark
        compiled = compile_openvino(build.engine, threads=b.threads, hint=b.hint, pin_threads=b.pin_threads)
        return lambda x: compiled(x)[0]

    def caller(self, build: BuildResult) -> Callable[[], object]:
        return openvino_call(build, self.profile)


def openvino_call(build: BuildResult, profile: Profile) -> Callable[[], object]:
    """One synchronous inference of the IR on a fixed random input, compiled as the profile says.
    (The infer request keeps its compiled model alive.)"""
    bench = profile.benchmark
    compiled = compile_openvino(build.engine, threads=bench.threads, hint=bench.hint,
                                pin_threads=bench.pin_threads)
    request = compiled.create_infer_request()
    x = random_input(input_dims(build.onnx, profile))
    return lambda: request.infer({0: x})


@PROBES.register("openvino")
def openvino_probe(profile: Profile) -> Probe:
    """Time synchronous inference of the IR, configured as the profile says."""
    def probe(build: BuildResult) -> Latency:
        times = time_calls(openvino_call(build, profile), profile.benchmark)
        return summarize(times, runtime="openvino", device=host_cpu())
    return probe
