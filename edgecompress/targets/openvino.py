"""OpenVINO target (x86 CPU): IR build and local latency probe; engines are opened by the one
loader (targets/deploy.py) with their settings."""
from __future__ import annotations

import shutil
from pathlib import Path

from edgecompress.exporters import onnx_to_openvino
from edgecompress.profiles import Profile
from edgecompress.targets.base import PROBES, RUNTIMES, BuildResult, Latency, Probe, Target, host_cpu, summarize, time_calls


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


@PROBES.register("openvino")
def openvino_probe(profile: Profile) -> Probe:
    """Time synchronous inference of the IR, loaded with its settings."""
    def probe(build: BuildResult) -> Latency:
        target = OpenVINOTarget(profile, probe=probe, latency_source="local")
        times = time_calls(target.caller(build), profile.benchmark)
        return summarize(times, runtime="openvino", device=host_cpu())
    return probe
