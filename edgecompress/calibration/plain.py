"""The yardstick's INT8: what a user gets from the target's own tool at its defaults, without us.

- OpenVINO: `nncf.quantize(ov_model, dataset)` with NNCF's defaults (preset, 300-image subset,
  range estimators): its output is the OpenVINO INT8 IR itself;
- ONNX Runtime: `quant_pre_process` (shape inference + graph optimisation, which its
  documentation recommends before quantizing a CNN), then `quantize_static` with its defaults
  (QDQ, per-tensor int8 weights, int8 activations, MinMax);
- TensorRT: the device builds INT8 from a QDQ ONNX with symmetric (zero-point 0) activations, the
  only kind it takes: `quantize_static` with int8 activations.

Nothing here is tuned: a gain that this plain INT8 gives alone is not the tool's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgecompress.calibration.nncf_backend import quiet_nncf_info
from edgecompress.calibration.ort_qdq import pre_process
from edgecompress.calibration.readers import model_batches, nncf_dataset, onnx_input, ort_reader
from edgecompress.errors import MissingBackendError

PLAIN_IMAGES = 300   # nncf.quantize's default subset_size: what a user's ten seconds calibrate on
# what made each plain INT8: on TensorRT it is the QDQ ONNX (built by trtexec on the device, not here)
TOOLS = {"openvino": "nncf", "ort": "ort-quantize_static", "tensorrt": "ort-quantize_static-symmetric (QDQ for trtexec)"}


def plain_int8(runtime: str, src_onnx: str | Path, dst_dir: str | Path, batches: Sequence[np.ndarray]) -> Path:
    """The INT8 artifact the runtime's own tool makes from the FP32 ONNX: an IR (.xml) for
    OpenVINO, a QDQ ONNX otherwise."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    name, shape = onnx_input(src_onnx)
    batches = model_batches(batches, shape)
    if runtime == "openvino":
        return _nncf_defaults(src_onnx, dst_dir / "plain_int8.xml", batches)
    return _ort_defaults(src_onnx, dst_dir / "plain_int8.onnx", batches, name, symmetric=runtime == "tensorrt")


def _nncf_defaults(src_onnx, dst: Path, batches) -> Path:
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise MissingBackendError("nncf" if "nncf" in str(exc) else "openvino", "nncf") from exc
    with quiet_nncf_info():
        quantized = nncf.quantize(ov.convert_model(str(src_onnx)), nncf_dataset(batches))
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst


def _ort_defaults(src_onnx, dst: Path, batches, input_name: str, *, symmetric: bool) -> Path:
    try:
        from onnxruntime import quantization as q
    except ImportError as exc:
        raise MissingBackendError("onnxruntime", "onnx") from exc
    extra = {"activation_type": q.QuantType.QInt8, "extra_options": {"ActivationSymmetric": True}} if symmetric else {}
    prepared = dst.with_name("prepared.onnx")
    pre_process(src_onnx, prepared)   # as documented; a graph its shape inference rejects is quantized as exported
    q.quantize_static(str(prepared if prepared.is_file() else src_onnx), str(dst), ort_reader(batches, input_name),
                      **extra)
    prepared.unlink(missing_ok=True)
    return dst
