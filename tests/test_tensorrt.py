"""TensorRT engine build + round trip + local probe. Runs only where TensorRT and a CUDA GPU are
present (a Jetson, or a CUDA machine with `pip install tensorrt`); skipped with a reason here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _export_fixtures import export_pair, inputs
from edgecompress.exporters import TENSORRT_TOLERANCE, onnx_to_tensorrt, tensorrt_has_precision_flags
from edgecompress.profiles import Benchmark, load_profile
from edgecompress.targets import get_target
from edgecompress.targets.tensorrt import TrtEngine, tensorrt_local

pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not tensorrt_local(), reason="needs the tensorrt package and a CUDA GPU")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("trt"))


def test_feature_detection_matches_installed_version():
    import tensorrt as trt
    major = int(trt.__version__.split(".")[0])
    assert tensorrt_has_precision_flags(trt) == (major <= 10)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plan_round_trip(tmp_path, pair, precision):
    import tensorrt as trt
    model, fp32, _ = pair
    if precision == "fp16" and not tensorrt_has_precision_flags(trt):
        pytest.skip("TensorRT 11 is strongly typed: FP16 needs an FP16 ONNX")
    plan = onnx_to_tensorrt(fp32, tmp_path / "model.plan", precision=precision)
    x = inputs(5)   # more than the engine batch (1): the runner chunks
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(TrtEngine(plan)(x) - want).max() < TENSORRT_TOLERANCE[precision]


def test_int8_plan_from_qdq_and_local_probe(tmp_path, pair):
    _, _, int8 = pair
    profile = load_profile("jetson-orin").model_copy(update={"benchmark": Benchmark(warmup=5, iterations=20, min_time_s=0)})
    target = get_target(profile)
    assert target.latency_source == "local"
    build = target.build(int8, tmp_path, precision="int8")
    assert build.engine.suffix == ".plan" and build.built_here
    lat = target.measure(build)
    assert lat.method == "measured" and lat.iterations == 20 and lat.median_ms > 0
    ref = get_target(load_profile("x86-cpu-ort")).runner(build.__class__(
        engine=int8, onnx=int8, precision="int8", runtime="ort"))(inputs(4))
    got = target.runner(build)(inputs(4))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.1
