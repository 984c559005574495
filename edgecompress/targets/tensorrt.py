"""TensorRT target (Jetson Orin family): plan build + probe here when TensorRT and a CUDA GPU are
present; otherwise the QDQ/FP32 ONNX plus build_engine.sh, a runner on ONNX Runtime, and an
estimated latency (or ssh measurement on the device)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from edgecompress.exporters import is_qdq, onnx_to_tensorrt, write_trtexec_script
from edgecompress.exporters.common import need
from edgecompress.errors import UserError
from edgecompress.profiles import Profile
from edgecompress.targets.deploy import OPENERS
from edgecompress.targets.base import (PROBES, RUNTIMES, BuildResult, Latency, Probe, Runner, Target,
                                       input_dims, random_input, summarize, time_calls)

DEVICE_BUILD_NOTE = "engine must be built on the device with build_engine.sh"


def tensorrt_local() -> bool:
    """tensorrt importable and a CUDA GPU visible to torch (used for the I/O buffers)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch
    return torch.cuda.is_available()


class TrtEngine:
    """A deserialized plan with torch CUDA tensors as I/O buffers; batch fixed at build time."""

    def __init__(self, plan: Path) -> None:
        trt = need("tensorrt", "tensorrt")
        import torch
        self.torch, self.trt = torch, trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inp = next(n for n in names if is_in[n])
        self.out = next(n for n in names if not is_in[n])
        fixed = self.engine.get_tensor_shape(self.inp)[0]
        # a fixed-shape plan has no optimization profile; a dynamic one has the profile's batch
        self.batch = fixed if fixed > 0 else self.engine.get_tensor_profile_shape(self.inp, 0)[2][0]
        self.stream = torch.cuda.Stream()

    def bind(self, x: np.ndarray):
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.inp, tuple(xt.shape))
        yt = torch.empty(tuple(self.context.get_tensor_shape(self.out)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.inp, xt.data_ptr())
        self.context.set_tensor_address(self.out, yt.data_ptr())
        return xt, yt

    def execute(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.batch):   # the engine's batch is fixed: run in chunks, pad the last
            chunk = x[i:i + self.batch]
            pad = self.batch - len(chunk)
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
            _keep = self.bind(padded)
            self.execute()
            outs.append(_keep[1].cpu().numpy()[:len(chunk)])
        return np.concatenate(outs)


@RUNTIMES.register("tensorrt")
class TensorRTTarget(Target):
    runtime = "tensorrt"

    @classmethod
    def local_available(cls) -> bool:
        return tensorrt_local()

    def build(self, onnx_path: Path | str, out_dir: Path | str, *, precision: str) -> BuildResult:
        self.check_precision(precision)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        if precision == "int8" and not is_qdq(onnx_path):
            raise UserError(f"int8 on TensorRT needs the QDQ ONNX, got {onnx_path.name}",
                            "pass model_int8.onnx (explicit quantization; TensorRT 11 has no calibrators)")
        local_onnx = out_dir / onnx_path.name   # the script builds from the ONNX next to it
        out_dir.mkdir(parents=True, exist_ok=True)
        if local_onnx.resolve() != onnx_path.resolve():
            shutil.copy(onnx_path, local_onnx)
        script = write_trtexec_script(local_onnx.name, out_dir / "build_engine.sh", precision=precision,
                                      input_shape=input_dims(onnx_path, self.profile),
                                      dynamic_batch=self.profile.dynamic_batch)
        files = {"onnx": local_onnx, "build_script": script}
        if not tensorrt_local():
            return BuildResult(engine=local_onnx, onnx=onnx_path, precision=precision, runtime=self.runtime,
                               files=files, built_here=False, notes=(DEVICE_BUILD_NOTE,))
        plan = onnx_to_tensorrt(onnx_path, out_dir / "model.plan", precision=precision, batch=self.profile.batch)
        return BuildResult(engine=plan, onnx=onnx_path, precision=precision, runtime=self.runtime,
                           files={"engine": plan, **files},
                           notes=("plan built for THIS GPU; rebuild on the device with build_engine.sh",))

    def runner(self, build: BuildResult) -> Runner:
        if build.built_here and build.engine.suffix == ".plan":
            return TrtEngine(build.engine)
        # No engine here: accuracy is checked on the same ONNX with ONNX Runtime.
        from edgecompress.targets.deploy import open_engine
        return open_engine(build.onnx, "ort", {})

    def caller(self, build: BuildResult) -> Callable[[], object]:
        return tensorrt_call(build, self.profile)


def tensorrt_call(build: BuildResult, profile: Profile) -> Callable[[], object]:
    """`execute_async_v3` + stream sync of a plan built on this GPU, bound to a fixed random input."""
    if not (build.built_here and build.engine.suffix == ".plan"):
        raise UserError("no TensorRT engine was built here to time", "use --device ssh://user@host or estimate")
    engine = TrtEngine(build.engine)
    buffers = engine.bind(random_input(input_dims(build.onnx, profile)))

    def call() -> object:
        engine.execute()
        return buffers    # referenced here so the bound CUDA tensors live as long as the call
    return call


@PROBES.register("tensorrt")
def tensorrt_probe(profile: Profile) -> Probe:
    """Time `execute_async_v3` + stream sync of a plan built on this GPU."""
    def probe(build: BuildResult) -> Latency:
        times = time_calls(tensorrt_call(build, profile), profile.benchmark)
        import torch
        return summarize(times, runtime="tensorrt", device=f"{torch.cuda.get_device_name()} (local)")
    return probe


@OPENERS.register("tensorrt")
def open_plan(path: Path, settings: dict):
    """The one loader's TensorRT entry (targets/deploy.py): a plan built on this GPU. An ONNX
    (no TensorRT here) is built on the device first: build_engine.sh."""
    if Path(path).suffix != ".plan":
        raise UserError(f"{path} is the ONNX for the device, not a TensorRT engine",
                        "build the engine on the device with build_engine.sh, then load model.plan there")
    engine = TrtEngine(Path(path))

    def infer(x: np.ndarray) -> np.ndarray:
        _keep = engine.bind(x)
        engine.execute()
        return _keep[1].cpu().numpy()
    return infer, (int(engine.batch), *(int(d) for d in tuple(engine.engine.get_tensor_shape(engine.inp))[1:])), engine
