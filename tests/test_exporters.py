"""Every exporter round-trips: the artifact runs and matches PyTorch within its declared tolerance."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from _export_fixtures import export_pair, inputs
from edgecompress.errors import UserError
from edgecompress.targets.deploy import open_engine
from edgecompress.exporters import (EXPORTERS, ONNX_TOLERANCE, OPENVINO_INT8_REL_TOLERANCE, OPENVINO_TOLERANCE,
                                    ORT_TOLERANCE, is_qdq, onnx_parity, onnx_to_openvino,
                                    onnx_to_ort, to_onnx, write_trtexec_script)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("export"))


def torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_onnx_opset_fixed_batch_and_parity(pair):
    model, fp32, _ = pair
    m = onnx.load(str(fp32))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]  # fixed shape
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)  # folded
    assert onnx_parity(model, fp32, inputs(5)) < ONNX_TOLERANCE   # 5 images through a batch-1 graph


def test_onnx_dynamic_batch_only_when_asked(tmp_path, pair):
    path = to_onnx(pair[0], tmp_path / "dyn.onnx", input_shape=(1, 28, 28), batch=None)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    engine = open_engine(path, "ort", {})
    assert not engine.fixed_batch and engine.shape == (1, 1, 28, 28)   # timed at the profile's batch


def test_onnx_rejects_old_opset(tmp_path, pair):
    with pytest.raises(Exception, match="opset"):
        to_onnx(pair[0], tmp_path / "m.onnx", input_shape=(1, 28, 28), opset=13)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_openvino_round_trip(tmp_path, pair, precision):
    model, fp32, _ = pair
    xml = onnx_to_openvino(fp32, tmp_path / "model.xml", fp16=(precision == "fp16"))
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    x = inputs(3)
    diff = np.abs(exact_openvino(xml)(x) - torch_out(model, x)).max()
    assert diff < OPENVINO_TOLERANCE[precision]


def exact_openvino(xml):
    return open_engine(xml, "openvino", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})


def test_openvino_compile_settings_reach_the_plugin(tmp_path, pair):
    xml = onnx_to_openvino(pair[1], tmp_path / "model.xml")
    compiled = open_engine(xml, "openvino", {"INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False,
                                             "INFERENCE_PRECISION_HINT": "f32"}).handle
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_openvino_fp16_weights_are_smaller(tmp_path, pair):
    a = onnx_to_openvino(pair[1], tmp_path / "a.xml", fp16=False).with_suffix(".bin").stat().st_size
    b = onnx_to_openvino(pair[1], tmp_path / "b.xml", fp16=True).with_suffix(".bin").stat().st_size
    assert b < 0.6 * a


def test_openvino_int8_from_qdq(tmp_path, pair):
    import openvino as ov
    _, _, int8 = pair
    assert is_qdq(int8)
    xml = onnx_to_openvino(int8, tmp_path / "int8.xml")
    ops = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in ops
    x = inputs(4)
    ref = open_engine(int8, "ort", {})(x)
    got = exact_openvino(xml)(x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < OPENVINO_INT8_REL_TOLERANCE


def test_ort_format_round_trip(tmp_path, pair):
    model, fp32, _ = pair
    dst = onnx_to_ort(fp32, tmp_path / "model.ort")
    assert dst.read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier of the ORT format
    x = inputs(3)
    assert np.abs(open_engine(dst, "ort", {})(x) - torch_out(model, x)).max() < ORT_TOLERANCE


def test_ort_format_int8_matches_qdq(tmp_path, pair):
    int8 = pair[2]
    dst = onnx_to_ort(int8, tmp_path / "model_int8.ort")
    x = inputs(3)
    ref = open_engine(int8, "ort", {})(x)
    got = open_engine(dst, "ort", {})(x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < OPENVINO_INT8_REL_TOLERANCE


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        onnx_to_openvino(tmp_path / "nope.onnx", tmp_path / "x.xml")


def test_exporter_registry_names():
    assert set(EXPORTERS.names()) == {"onnx", "openvino", "ort", "tensorrt", "trtexec-script"}


# --- build_engine.sh: run it against stand-in trtexec programs of both TensorRT generations ----

FAKE_TRTEXEC = """#!/bin/sh
if [ "$1" = "--help" ]; then echo "{help}"; exit 0; fi
echo "$@" > "$(dirname "$0")/args.txt"
"""


def test_trtexec_script_gives_shapes_only_for_a_dynamic_batch(tmp_path):
    script = write_trtexec_script("m.onnx", tmp_path / "b.sh", precision="fp32", input_shape=(1, 1, 28, 28),
                                  dynamic_batch=True)
    assert "--optShapes=input:1x1x28x28" in script.read_text()


@pytest.mark.parametrize("generation,precision,want,absent", [
    ("10", "int8", ["--fp16", "--int8"], ["--stronglyTyped"]),
    ("10", "fp32", [], ["--fp16", "--int8", "--stronglyTyped"]),
    ("11", "int8", ["--stronglyTyped"], ["--fp16", "--int8"]),
])
def test_trtexec_script_picks_flags_by_tensorrt_generation(tmp_path, generation, precision, want, absent):
    help_text = ("  --fp16  Enable fp16 precision\n  --int8  Enable int8 precision\n  --stronglyTyped"
                 if generation == "10" else "  --stronglyTyped  Create a strongly typed network")
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC.format(help=help_text))
    fake.chmod(0o755)
    script = write_trtexec_script("model_int8.onnx", tmp_path / "run" / "build_engine.sh",
                                  precision=precision, input_shape=(1, 1, 28, 28))
    subprocess.run(["bash", str(script), str(fake)], check=True, capture_output=True, timeout=30)
    args = (fake.parent / "args.txt").read_text().split()
    assert "--onnx=model_int8.onnx" in args and "--saveEngine=model.plan" in args
    # the ONNX has a fixed shape: trtexec rejects explicit shapes for a static model
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes")) for a in args)
    assert all(w in args for w in want) and not any(a in args for a in absent)
