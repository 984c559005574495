"""ONNX Runtime target (x86 CPU with the ONNX itself, mobile with .ort): build and local probe;
engines are opened by the one loader (targets/deploy.py) with their settings."""
from __future__ import annotations

import shutil
from pathlib import Path

from edgecompress.exporters import onnx_to_ort
from edgecompress.profiles import Profile
from edgecompress.targets.base import PROBES, RUNTIMES, BuildResult, Latency, Probe, Target, host_cpu, summarize, time_calls


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


@PROBES.register("ort")
def ort_probe(profile: Profile) -> Probe:
    """Time `session.run` on this CPU, loaded with the engine's settings."""
    def probe(build: BuildResult) -> Latency:
        target = OrtTarget(profile, probe=probe, latency_source="local")
        times = time_calls(target.caller(build), profile.benchmark)
        return summarize(times, runtime="ort", device=host_cpu())
    return probe
