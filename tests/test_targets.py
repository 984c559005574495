"""Targets: build per runtime, runner matches PyTorch, probes report method honestly, estimator."""
from __future__ import annotations

from dataclasses import replace

import math

import numpy as np
import pytest
import torch

from _export_fixtures import export_pair, inputs
from edgecompress.errors import UserError
from edgecompress.exporters import to_onnx
from edgecompress.profiles import Benchmark, load_profile
from edgecompress.targets import PROBES, RUNTIMES, SSHProbe, estimate_latency, get_target, layer_costs
from edgecompress.targets.base import Latency, time_calls
from edgecompress.targets.tensorrt import DEVICE_BUILD_NOTE, tensorrt_local
from edgecompress.zoo.models import BasicBlock, CifarResNet

QUICK = Benchmark(warmup=2, iterations=15, min_time_s=0.0, max_time_s=5.0)


def quick(name: str):
    return load_profile(name).model_copy(update={"benchmark": QUICK})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("targets"))


def torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_registries_cover_every_runtime_and_probe():
    assert RUNTIMES.names() == ["openvino", "ort", "tensorrt"]
    assert PROBES.names() == ["estimate", "openvino", "ort", "ssh", "tensorrt"]


@pytest.mark.parametrize("name,engine,precision", [
    ("x86-cpu", "model.xml", "fp32"), ("x86-cpu", "model.xml", "int8"),
    ("x86-cpu-ort", "model.onnx", "fp32"), ("mobile-arm64", "model.ort", "fp32")])
def test_local_cpu_targets_build_measure_and_run(tmp_path, pair, name, engine, precision):
    model, fp32, int8 = pair
    target = get_target(quick(name))
    build = target.build(int8 if precision == "int8" else fp32, tmp_path, precision=precision)
    assert build.engine.name == engine and build.engine.is_file() and build.built_here
    lat = target.measure(build)
    want = "estimated" if name == "mobile-arm64" else "measured"   # no arm64 device here
    assert lat.method == want and lat.median_ms > 0 and lat.p90_ms >= lat.median_ms
    assert lat.iterations == (0 if want == "estimated" else 15)
    x = inputs(3)
    exact = {"openvino": {"INFERENCE_PRECISION_HINT": "f32"}}.get(build.runtime, {})  # this CPU defaults to bf16
    got = target.runner(replace(build, settings={**target.settings(build), **exact}))(x)
    want = torch_out(model, x)
    # INT8: within a tenth of the logits' range of the float model (a broken scale or zero point is
    # off by far more), and the same top-1 class on most inputs
    tol = 1e-4 if precision == "fp32" else 0.1 * np.abs(want).max()
    assert got.shape == want.shape and np.abs(got - want).max() < tol


@pytest.mark.skipif(tensorrt_local(), reason="TensorRT + GPU present: the engine is built here instead")
def test_jetson_without_tensorrt_emits_onnx_script_and_estimates(tmp_path, pair):
    model, _, int8 = pair
    target = get_target("jetson-orin")
    assert target.latency_source == "estimate" and "ESTIMATED" in target.notes[0]
    build = target.build(int8, tmp_path / "run", precision="int8")
    assert not build.built_here and DEVICE_BUILD_NOTE in build.notes
    assert build.files["build_script"].name == "build_engine.sh"
    assert "--int8" in build.files["build_script"].read_text()
    assert build.engine == tmp_path / "run" / "model_int8.onnx" and build.engine.is_file()
    lat = target.measure(build)
    assert lat.method == "estimated" and lat.iterations == 0 and "estimated" in lat.device
    got = target.runner(build)(inputs(2))     # ONNX Runtime on the QDQ ONNX
    assert got.shape == (2, 10)


def test_precision_checks(tmp_path, pair):
    _, fp32, int8 = pair
    with pytest.raises(UserError, match="does not support precision 'fp16'"):
        get_target("mobile-arm64").build(fp32, tmp_path, precision="fp16")
    with pytest.raises(UserError, match="QDQ"):
        get_target("x86-cpu").build(fp32, tmp_path, precision="int8")
    with pytest.raises(UserError, match="QDQ"):
        get_target("jetson-orin-nano").build(fp32, tmp_path, precision="int8")


def test_device_override():
    assert get_target("x86-cpu", device="estimate").latency_source == "estimate"
    target = get_target("jetson-orin", device="ssh://nvidia@127.0.0.1:2222")
    assert isinstance(target._probe, SSHProbe) and target._probe.device.port == 2222
    with pytest.raises(UserError, match="latency source"):
        get_target("x86-cpu", device="usb://x")


def test_time_calls_meets_iterations_and_min_time():
    calls = []
    times = time_calls(lambda: calls.append(1), Benchmark(warmup=3, iterations=7, min_time_s=0.0))
    assert len(times) == 7 and len(calls) == 10


class _FakeClock:
    """time.perf_counter for time_calls: each engine call takes exactly `call_s` of fake time."""

    def __init__(self, call_s: float) -> None:
        self.now, self.call_s = 0.0, call_s

    def __call__(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += self.call_s


def test_time_calls_keeps_going_until_min_time_then_stops_at_max_time(monkeypatch):
    from edgecompress.targets import base
    clock = _FakeClock(0.010)
    monkeypatch.setattr(base.time, "perf_counter", clock)
    times = time_calls(clock.call, Benchmark(warmup=0, iterations=1, min_time_s=0.045, max_time_s=30.0))
    assert times == pytest.approx([10.0] * 5)          # 1 iteration asked, 45 ms required: 5 calls of 10 ms
    clock.now = 0.0
    times = time_calls(clock.call, Benchmark(warmup=0, iterations=1000, min_time_s=0.0, max_time_s=0.095))
    assert len(times) == 10                            # past max_time_s with MIN_ITERATIONS (10) done
    clock.now = 0.0
    slow = _FakeClock(1.0)
    monkeypatch.setattr(base.time, "perf_counter", slow)
    assert len(time_calls(slow.call, Benchmark(warmup=0, iterations=1000, min_time_s=0.0, max_time_s=0.1))) == 10


def test_latency_to_dict_maps_nan_to_none():
    d = Latency(1.0, math.nan, 3, "measured", "openvino", "cpu").to_dict()
    assert d["p90_ms"] is None and d["median_ms"] == 1.0


# --- estimator -----------------------------------------------------------------------------------

def _onnx_with_widths(tmp_path, widths):
    model = CifarResNet(BasicBlock, 1, in_channels=1, num_classes=10, widths=widths).eval()
    return to_onnx(model, tmp_path / f"w{'-'.join(map(str, widths))}.onnx", input_shape=(1, 28, 28))


def test_estimator_rounds_channels_up_to_alignment(tmp_path):
    prof = load_profile("x86-cpu")   # alignment 16
    assert prof.device.alignment == 16
    flops = {w: sum(c.flops for c in layer_costs(_onnx_with_widths(tmp_path, (w, 32, 32)), prof, precision="fp32")
                    if c.op == "Conv") for w in (17, 20, 32, 33)}
    assert flops[17] == flops[20] == flops[32] < flops[33]


def test_estimator_is_monotone_in_width_and_precision(tmp_path, pair):
    prof = load_profile("jetson-orin")
    small = estimate_latency(_onnx_with_widths(tmp_path, (8, 16, 32)), prof, precision="fp32")
    big = estimate_latency(_onnx_with_widths(tmp_path, (64, 128, 256)), prof, precision="fp32")
    assert small.method == big.method == "estimated" and small.median_ms < big.median_ms
    fp32 = estimate_latency(pair[1], prof, precision="fp32").median_ms
    fp16 = estimate_latency(pair[1], prof, precision="fp16").median_ms
    assert fp16 <= fp32
    costs = layer_costs(pair[2], prof, precision="int8")   # QDQ: convs seen through DequantizeLinear
    assert sum(c.op == "Conv" for c in costs) == sum(c.op == "Conv" for c in layer_costs(pair[1], prof, precision="fp32"))
