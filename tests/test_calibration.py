"""calibration/: readers, INT8 backends, precision selection with layer fallback (issue 5)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.targets.engines import engine_accuracy
from edgecompress.calibration import (CALIBRATORS, PrecisionSelector, array_batches, artifact_evaluator,
                                      calibration_batches, choose_precision, layer_sensitivity,
                                      openvino_runner, ort_runner, quantize_int8)
from edgecompress.calibration.ort_qdq import quantizable_layers
from edgecompress.errors import UserError
from edgecompress.zoo import create_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def export(model: nn.Module, path, shape) -> str:
    from edgecompress.exporters import to_onnx
    return str(to_onnx(model.eval(), path, input_shape=shape))


def randn(*shape, seed=0) -> np.ndarray:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-resnet at 1x16x16 with a few calibration batches."""
    torch.manual_seed(0)
    path = export(create_model("tiny-resnet"), tmp_path_factory.mktemp("tiny") / "model.onnx", (1, 16, 16))
    return path, [randn(8, 1, 16, 16, seed=i) for i in range(3)]


# -- readers ----------------------------------------------------------------------------------

def test_calibration_batches_sample_training_split():
    data = TensorDataset(torch.arange(100.0).view(100, 1, 1, 1).expand(100, 1, 2, 2).clone(), torch.zeros(100))
    batches = calibration_batches(data, count=40, batch_size=16, seed=3)
    assert [b.shape for b in batches] == [(16, 1, 2, 2), (16, 1, 2, 2), (8, 1, 2, 2)]
    values = np.concatenate(batches)[:, 0, 0, 0]
    assert len(set(values.tolist())) == 40            # without replacement
    again = np.concatenate(calibration_batches(data, count=40, batch_size=16, seed=3))[:, 0, 0, 0]
    assert np.array_equal(values, again)              # seeded


def test_fewer_images_than_asked_warns_with_count_used():
    data = TensorDataset(torch.zeros(10, 1, 4, 4), torch.zeros(10))
    with pytest.warns(UserWarning, match="asked for 512 .* using 10"):
        batches = calibration_batches(data)
    assert sum(len(b) for b in batches) == 10


def test_wrong_shape_names_expected_and_given(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(UserError, match=r"shape \(4, 3, 16, 16\).*\(N, 1, 16, 16\)"):
        quantize_int8(path, tmp_path / "q.onnx", [randn(4, 3, 16, 16)])
    assert not (tmp_path / "q.onnx").exists()


def test_unknown_method_and_backend_list_valid_ones(tiny, tmp_path):
    path, batches = tiny
    with pytest.raises(UserError) as err:
        quantize_int8(path, tmp_path / "q.onnx", batches, method="kl")
    assert "minmax" in err.value.hint and "entropy" in err.value.hint and "percentile" in err.value.hint
    with pytest.raises(UserError, match="not available with the nncf"):
        quantize_int8(path, tmp_path / "q.xml", batches, method="entropy", backend="nncf")
    with pytest.raises(UserError, match="unknown calibration backend"):
        quantize_int8(path, tmp_path / "q.onnx", batches, backend="tensorrt")
    assert CALIBRATORS.names() == ["nncf", "nncf-onnx", "ort"]


# -- ORT QDQ ------------------------------------------------------------------------------------

def _initialiser(model, name):
    return next((onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name), None)


def test_ort_qdq_per_channel_weights_and_keep_float(tiny, tmp_path):
    path, batches = tiny
    keep = "/layer1/layer1.0/conv1/Conv"
    dst = quantize_int8(path, tmp_path / "q.onnx", batches, keep_float=[keep])
    model = onnx.load(str(dst))
    nodes = {n.name: n for n in model.graph.node}
    produced = {o: n for n in model.graph.node for o in n.output}
    conv = nodes["/layer2/layer2.0/conv1/Conv"]
    weight_dq = produced[conv.input[1]]
    assert weight_dq.op_type == "DequantizeLinear"
    assert _initialiser(model, weight_dq.input[1]).shape == (16,)   # one scale per output channel
    kept_weight = nodes[keep].input[1]                               # float weights, no DQ
    assert kept_weight not in produced and _initialiser(model, kept_weight).dtype == np.float32
    x = randn(16, 1, 16, 16, seed=9)
    ref, got = ort_runner(path)(x), ort_runner(dst)(x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()         # INT8 close to FP32


def test_symmetric_activations_have_zero_point_zero(tiny, tmp_path):
    path, batches = tiny
    dst = quantize_int8(path, tmp_path / "q.onnx", batches, symmetric_activations=True)
    model = onnx.load(str(dst))
    zps = [_initialiser(model, n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_build_a_working_model(tiny, tmp_path, method):
    path, batches = tiny
    dst = quantize_int8(path, tmp_path / "q.onnx", batches, method=method)
    x = randn(8, 1, 16, 16, seed=5)
    ref, got = ort_runner(path)(x), ort_runner(dst)(x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()         # INT8 close to FP32, not just finite
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(dst)).graph.node)


# -- NNCF ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nncf_writes_openvino_int8_ir_and_honours_keep_float(tiny, tmp_path):
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    path, batches = tiny
    keep = "/layer2/layer2.0/conv1/Conv"
    xml = quantize_int8(path, tmp_path / "q.onnx", batches, backend="nncf", keep_float=[keep])
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(xml))
    fq_consumers = {c.get_node().get_friendly_name() for op in model.get_ordered_ops()
                    if op.get_type_name() == "FakeQuantize" for c in op.output(0).get_target_inputs()}
    assert "/layer3/layer3.0/conv1/Conv/WithoutBiases" in fq_consumers
    assert f"{keep}/WithoutBiases" not in fq_consumers
    x = randn(8, 1, 16, 16, seed=5)
    ref, got = ort_runner(path)(x), openvino_runner(xml)(x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.slow
def test_nncf_onnx_writes_a_symmetric_qdq_onnx_for_tensorrt_and_honours_keep_float(tiny, tmp_path):
    pytest.importorskip("nncf")
    path, batches = tiny
    keep = "/layer2/layer2.0/conv1/Conv"
    dst = quantize_int8(path, tmp_path / "q.xml", batches, backend="nncf-onnx", keep_float=[keep],
                        symmetric_activations=True)
    assert dst.suffix == ".onnx"
    model = onnx.load(str(dst))
    produced = {o: n for n in model.graph.node for o in n.output}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert produced[convs["/layer3/layer3.0/conv1/Conv"].input[1]].op_type == "DequantizeLinear"
    kept = produced.get(convs[keep].input[1])
    assert kept is None or kept.op_type != "DequantizeLinear"
    zps = [_initialiser(model, n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z is not None and z.dtype == np.int8 and not z.any() for z in zps)   # what TensorRT takes
    onnx.shape_inference.infer_shapes(model, strict_mode=True)   # its declared types agree (the estimator reads them)
    x = randn(8, 1, 16, 16, seed=5)
    ref, got = ort_runner(path)(x), ort_runner(dst)(x)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_signed_activations_keep_an_unsigned_quantizers_range():
    """uint8 with zero point 0 over [0, 255 s] becomes int8 over the same top end (scale x 255 / 127):
    the largest value survives the round trip instead of clipping at 127 s."""
    from onnx import TensorProto, helper, numpy_helper
    from edgecompress.calibration.nncf_backend import signed_activations
    s = 0.01
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(s, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")],
        value_info=[helper.make_tensor_value_info("q", TensorProto.UINT8, [4]),
                    helper.make_tensor_value_info("z", TensorProto.UINT8, [])])
    model = signed_activations(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    import onnxruntime as ort
    x = np.array([0.0, 0.5, 1.5, 255 * s], np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - x).max() <= s * 255 / 127 / 2 + 1e-6


# -- precision selection (injected evaluate) ------------------------------------------------

class FakeTarget:
    """evaluate() of a target whose INT8 breaks unless layers 'a' and 'b' stay float."""

    def __init__(self, int8_ok_with=("a", "b"), acc=None, lat=None):
        self.calls = []
        self.int8_ok_with = set(int8_ok_with)
        self.acc = acc or {"fp32": 90.0, "fp16": 89.9, "int8": 70.0}
        self.lat = lat or {"fp32": 3.0, "fp16": 2.5, "int8": 1.0}

    def __call__(self, precision, keep_float):
        self.calls.append((precision, tuple(keep_float)))
        acc = self.acc[precision]
        if precision == "int8" and self.int8_ok_with <= set(keep_float):
            acc = 89.5
        return acc, self.lat[precision] + 0.1 * len(keep_float), {"backend": "fake"}


def ranking():
    return [("a", 5.0), ("b", 3.0), ("c", 1.0), ("d", 0.5)]


def test_auto_keeps_sensitive_layers_float_one_at_a_time():
    fake = FakeTarget()
    with pytest.warns(UserWarning, match="2 layer"):
        sel = PrecisionSelector(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"],
                                layer_sensitivity=ranking).select("auto")
    assert sel.precision == "int8" and sel.chosen.keep_float == ("a", "b")
    assert [c for c in fake.calls if c[0] == "int8"] == [("int8", ()), ("int8", ("a",)), ("int8", ("a", "b"))]
    tried = sel.to_dict()["tried"]
    assert [(t["precision"], t["keep_float"], t["meets_budget"]) for t in tried][-1] == ("int8", ["a", "b"], True)
    assert all({"accuracy", "latency_ms", "keep_float", "backend"} <= set(t) for t in tried)
    json.dumps(sel.to_dict())


def test_auto_picks_fastest_passing_precision():
    fake = FakeTarget(acc={"fp32": 90.0, "fp16": 89.5, "int8": 89.2})
    sel = choose_precision(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"])
    assert sel.precision == "int8" and sel.chosen.keep_float == ()
    fake = FakeTarget(acc={"fp32": 90.0, "fp16": 89.5, "int8": 89.2}, lat={"fp32": 3.0, "fp16": 2.0, "int8": 2.5})
    assert choose_precision(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"]).precision == "fp16"


def test_fallback_that_fails_uses_best_float_and_says_so():
    fake = FakeTarget(int8_ok_with=("z",))
    with pytest.warns(UserWarning, match="fell back to fp16"):
        sel = PrecisionSelector(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"],
                                layer_sensitivity=ranking, max_float_layers=3).select()
    assert sel.precision == "fp16"
    assert len([c for c in fake.calls if c[0] == "int8"]) == 1 + 3     # capped at 3 tries
    assert any("fell back to fp16" in n for n in sel.notes)


def test_fallback_skipped_when_plain_int8_is_already_slower():
    fake = FakeTarget(lat={"fp32": 3.0, "fp16": 2.5, "int8": 4.0})
    with pytest.warns(UserWarning, match="skipped"):
        sel = choose_precision(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"],
                               layer_sensitivity=ranking)
    assert sel.precision == "fp16" and fake.calls.count(("int8", ())) == 1 and len(fake.calls) == 3


def test_forced_precision_missing_budget_states_accuracy_and_budget():
    fake = FakeTarget(int8_ok_with=("z",))
    with pytest.raises(UserError, match=r"--precision int8: measured accuracy 70.00%.*budget of 89.00%"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choose_precision(evaluate=fake, budget_accuracy=89.0, precisions=["fp32", "int8"],
                             precision="int8", layer_sensitivity=ranking)
    with pytest.raises(UserError, match=r"fp16: measured accuracy 89.90%.*budget of 90.00%"):
        choose_precision(evaluate=FakeTarget(), budget_accuracy=90.0, precisions=["fp32", "fp16"], precision="fp16")
    forced = choose_precision(evaluate=FakeTarget(), budget_accuracy=89.0, precisions=["fp32", "fp16"], precision="fp32")
    assert forced.precision == "fp32" and len(forced.records) == 1
    with pytest.raises(UserError, match="valid: auto, fp32"):
        choose_precision(evaluate=FakeTarget(), budget_accuracy=89.0, precisions=["fp32"], precision="int8")


def test_no_precision_meets_budget_is_a_user_error():
    with pytest.raises(UserError, match="no precision meets .* 95.00%"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choose_precision(evaluate=FakeTarget(), budget_accuracy=95.0, precisions=["fp32", "int8"],
                             layer_sensitivity=ranking)


# -- a model built to break per-tensor INT8 --------------------------------------------------

class OutlierNet(nn.Module):
    """conv_b's channel 0 is ~1000x its other channels and conv_c scales it back down, so the
    other channels carry the signal: a per-tensor INT8 scale for conv_b's output (conv_c's input)
    rounds them all to zero, and the prediction collapses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_a, self.conv_b, self.conv_c, self.conv_d = (nn.Conv2d(c, 8, 3, padding=1) for c in (1, 8, 8, 8))
        self.fc = nn.Linear(8 * 8 * 8, 10)
        with torch.no_grad():
            self.conv_b.weight[0] *= 1000.0
            self.conv_b.bias[0] = 1000.0
            self.conv_c.weight[:, 0] /= 1000.0
            # Centre the logits on data so that FP32 predicts all ten classes.
            x = torch.from_numpy(randn(256, 1, 8, 8, seed=2))
            self.fc.bias.copy_(-(self.fc.weight @ self.features(x).mean(0)))

    def features(self, x):
        for conv in (self.conv_a, self.conv_b, self.conv_c, self.conv_d):
            x = torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def test_outlier_model_keeps_layers_float_and_meets_budget(tmp_path):
    path = export(OutlierNet(), tmp_path / "model.onnx", (1, 8, 8))
    calib = [randn(16, 1, 8, 8, seed=10 + i) for i in range(4)]
    val = randn(300, 1, 8, 8, seed=1)
    labels = ort_runner(path)(val).argmax(1)             # FP32 is 100 % by construction
    assert len(set(labels.tolist())) >= 5
    evaluate = artifact_evaluator(fp32_onnx=path, work_dir=tmp_path / "try", calib_batches=calib,
                                  val_images=val, val_labels=labels,
                                  build=lambda src, precision, out: src, run=ort_runner, measure=lambda b: None)
    sensitivity = lambda: layer_sensitivity(path, calib, [val[:64]])  # noqa: E731
    with pytest.warns(UserWarning, match="kept float"):
        sel = choose_precision(evaluate=evaluate, budget_accuracy=90.0, precisions=["int8"],
                               precision="int8", layer_sensitivity=sensitivity)
    plain = sel.records[0]
    assert plain.keep_float == () and plain.accuracy < 50.0 and not plain.meets_budget
    assert sel.chosen.meets_budget and sel.chosen.accuracy >= 90.0
    assert set(sel.chosen.keep_float) == {"/conv_b/Conv", "/conv_c/Conv"}
    assert len(sel.chosen.keep_float) < len(quantizable_layers(path))   # the rest stay INT8
    assert sel.to_dict()["keep_float"] == list(sel.chosen.keep_float)
    assert sel.chosen.backend == "ort-qdq"
    # The chosen QDQ artifact also holds in OpenVINO (the x86 target's runtime).
    pytest.importorskip("openvino")
    assert engine_accuracy(openvino_runner(sel.chosen.details["artifact"]), array_batches(val, labels)) >= 90.0


def test_import_needs_no_heavy_backend():
    code = ("import sys, edgecompress.calibration; "
            "print([m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("target, chosen, ships", [
    ("jetson-orin", "fp16", "fp16"),   # TensorRT's own float precision, as its plain engine: never traded for FP32
    ("jetson-orin", "int8", "fp16"),   # INT8 not 5 % faster than FP32 (estimated): the target's float precision
    ("x86-cpu", "int8", "fp32"),
])
def test_a_precision_that_is_not_measurably_faster_falls_back_to_the_targets_own_float_precision(target, chosen, ships):
    from types import SimpleNamespace
    from edgecompress.calibration.accuracy_control import PrecisionRecord, Selection
    from edgecompress.pipeline.stages.calibrate import _measurably_faster
    from edgecompress.profiles import load_profile
    same = {"ratio": {"ratio": 0.99, "low": 0.98, "high": 1.01}}   # 1 % faster than FP32, inside the noise
    records = [PrecisionRecord("fp32", 54.08, None, (), True),
               PrecisionRecord("fp16", 54.08, 0.637, (), True, details=same),
               PrecisionRecord("int8", 54.0, 0.635, (), True, details=same)]
    notes = []
    ctx = SimpleNamespace(profile=load_profile(target), config=SimpleNamespace(precision="auto"),
                          target=SimpleNamespace(latency_source="estimate" if target == "jetson-orin" else "local"),
                          note=notes.append)
    pick = next(r for r in records if r.precision == chosen)
    assert _measurably_faster(ctx, Selection(chosen=pick, records=records, budget_accuracy=53.08)).precision == ships
    assert bool(notes) == (ships != chosen)


def test_candidates_timed_in_comparisons_of_their_own_are_weighed_on_one_scale(monkeypatch):
    """FP16 and INT8 are each timed against FP32 in a comparison of its own, while the machine's
    speed drifts: FP16 at 1.02x of FP32 in a fast minute must not beat INT8 at 0.90x in a slow one
    (a default run shipped FP32 after the selector took FP16 on its 0.266 ms against INT8's 0.311 ms)."""
    from edgecompress.pipeline.stages import calibrate
    from edgecompress.targets.timing import Ratio, Timing

    # (FP32 ms in that comparison, the candidate's ratio to it)
    drift = iter([(0.26, 1.02), (0.35, 0.90)])

    def fake_timing(target, builds, *, reference, layouts, **kw):
        assert layouts == 3   # the decision is timed in the profile's check_layouts, as prune's
        ref_ms, ratio = next(drift)
        name = next(n for n in builds if n != reference)
        return Timing(reference=reference, ratios={reference: Ratio(1, 1, 1), name: Ratio(ratio, ratio - 0.01, ratio + 0.01)},
                      ms={reference: ref_ms, name: ref_ms * ratio}, blocks=100, runs_per_block=20, seconds=1.0,
                      stopped="precise")
    monkeypatch.setattr(calibrate, "timed_in_layouts", fake_timing)
    evaluator = object.__new__(calibrate.Evaluator)
    evaluator.ctx = SimpleNamespace(target=None, profile=SimpleNamespace(benchmark=SimpleNamespace(compare_time_s=1.0,
                                                                                                   check_layouts=3)))
    evaluator.reference, evaluator.backends, evaluator.budget, evaluator.reference_ms = "fp32 engine", ["ort"], 89.0, None
    evaluator.builds = {"ort": lambda precision, keep_float: (90.0, None, {"built": precision, "backend": "ort"})}
    sel = choose_precision(evaluate=evaluator, budget_accuracy=89.0, precisions=["fp32", "fp16", "int8"])
    assert sel.precision == "int8"
    latency = {r.precision: r.latency_ms for r in sel.records}
    assert latency["fp16"] == pytest.approx(0.26 * 1.02) and latency["int8"] == pytest.approx(0.26 * 0.90)


def test_nncf_draws_no_progress_bars_into_the_run_output(tiny, tmp_path, capsys):
    """A user's plain NNCF INT8 is made inside the run: NNCF's rich progress bars ("Statistics
    collection ...") must not land in the run's output."""
    pytest.importorskip("nncf")
    from edgecompress.calibration.plain import plain_int8
    path, batches = tiny
    assert plain_int8("openvino", path, tmp_path, batches).exists()
    out = capsys.readouterr().out
    assert "Statistics collection" not in out and "━" not in out, out


def test_a_float_fallback_ships_on_the_runtime_measurably_fastest_at_that_precision():
    """The runtime was chosen for INT8; INT8 missed the budget: FP32 ships on the runtime whose
    original FP32 the baseline timed measurably faster (intervals apart), else the runtime stays."""
    from types import SimpleNamespace

    from edgecompress.pipeline.stages.calibrate import runtime_for

    def cand(runtime, precision, ratio, low, high):
        return {"runtime": runtime, "precision": precision, "ratio": {"ratio": ratio, "low": low, "high": high}}

    candidates = {"openvino int8": cand("openvino", "int8", 1.0, 1.0, 1.0), "openvino fp32": cand("openvino", "fp32", 0.71, 0.71, 0.75),
                  "ort int8": cand("ort", "int8", 0.70, 0.67, 0.71), "ort fp32": cand("ort", "fp32", 0.99, 0.96, 1.03)}
    ctx = SimpleNamespace(target=SimpleNamespace(runtime="ort"),
                          results=SimpleNamespace(baseline=SimpleNamespace(settings_choice={"candidates": candidates})))
    assert runtime_for(ctx, "fp32") == "openvino"
    assert runtime_for(ctx, "int8") == "ort"                   # the precision it was chosen for
    ctx.target.runtime = "openvino"
    assert runtime_for(ctx, "int8") == "openvino"              # INT8 stays where its accuracy was checked
    ctx.target.runtime = "ort"
    assert runtime_for(ctx, "fp16") == "ort"                   # not timed in the baseline: stays
    candidates["ort fp32"] = cand("ort", "fp32", 0.74, 0.72, 0.78)
    assert runtime_for(ctx, "fp32") == "ort"                   # overlapping intervals: stays
    ctx.results.baseline.settings_choice = {}                  # estimated / remote: nothing timed
    assert runtime_for(ctx, "fp32") == "ort"
