"""INT8 post-training quantization to a QDQ ONNX with ONNX Runtime's `quantize_static`.

The QDQ ONNX is the portable INT8 artifact: TensorRT, OpenVINO and ONNX Runtime all build an
INT8 engine from it.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecompress.calibration.readers import model_batches, onnx_input, ort_reader
from edgecompress.util import need

METHODS = ("minmax", "entropy", "percentile")
# Layers whose inputs (weights + activation) get INT8: the compute-heavy ops an engine runs in INT8.
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _ort_quantization():
    return need("onnxruntime.quantization", "onnx")


def quantizable_layers(onnx_path: str | Path) -> list[str]:
    """Names of the ONNX nodes that hold weights and run in INT8, in graph order."""
    onnx = need("onnx", "onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in LAYER_OPS]


def _options(method: str, symmetric_activations: bool):
    q = _ort_quantization()
    calibrate = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                 "percentile": q.CalibrationMethod.Percentile}[method]
    # TensorRT only accepts zero-point 0: signed activations with a symmetric range. Elsewhere
    # asymmetric unsigned activations use the full 8 bits after ReLU.
    activation = q.QuantType.QInt8 if symmetric_activations else q.QuantType.QUInt8
    extra = {"ActivationSymmetric": bool(symmetric_activations), "WeightSymmetric": True}
    return calibrate, activation, extra


def quantize_ort(src_onnx: str | Path, dst_onnx: str | Path, batches: Sequence[np.ndarray], *,
                 method: str = "minmax", symmetric_activations: bool = False,
                 keep_float: Sequence[str] = (), only: Sequence[str] | None = None,
                 cache: str | Path | None = None) -> Path:
    """Write a QDQ INT8 ONNX: per-channel INT8 weights, activations calibrated by `method`.

    `keep_float` names layers left in floating point; `only` (sensitivity probes) quantizes just
    those layers. `cache` is a calibration-range file reused across calls on the same model, so
    trying several layer sets calibrates once.
    """
    q = _ort_quantization()
    name, shape = onnx_input(src_onnx)
    batches = model_batches(batches, shape)
    calibrate, activation, extra = _options(method, symmetric_activations)
    dst = Path(dst_onnx)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ec-qdq-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        pre_process(src_onnx, prepared)
        # The entropy and percentile calibrators print progress to stdout; keep the CLI's output
        # to what the pipeline reports.
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(str(prepared), str(dst), ort_reader(batches, name),
                              quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=activation, weight_type=q.QuantType.QInt8,
                              calibrate_method=calibrate, nodes_to_exclude=list(keep_float),
                              nodes_to_quantize=list(only) if only is not None else None,
                              extra_options=extra,
                              calibration_cache_path=str(cache) if cache else None)
    return dst


def pre_process(src: str | Path, dst: Path) -> None:
    """Shape inference + graph optimisation before quantization, as ONNX Runtime recommends.

    Layer node names survive it, so `keep_float` names from the FP32 model still match. Symbolic
    shape inference rejects some valid graphs; quantization works without it, so it is skipped
    with a warning rather than failing the run.
    """
    _ort_quantization()  # a missing onnxruntime is reported as such
    from onnxruntime.quantization.shape_inference import quant_pre_process
    try:
        quant_pre_process(str(src), str(dst))
    except Exception as exc:  # noqa: BLE001 - any failure here only costs the optimisation
        warnings.warn(f"ONNX Runtime pre-processing failed ({exc}); quantizing the model as exported",
                      UserWarning, stacklevel=3)
        shutil.copyfile(src, dst)
