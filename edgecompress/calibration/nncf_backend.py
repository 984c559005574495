"""INT8 post-training quantization with NNCF.

For OpenVINO, NNCF takes the OpenVINO model converted from the FP32 ONNX (its most used and best
tuned backend, with the CPU plugin's quantization patterns): its output is the x86 OpenVINO engine
itself, an INT8 IR, and the report names this backend ("nncf"). For runtimes that build from a QDQ
ONNX (TensorRT), NNCF's ONNX backend writes one ("nncf-onnx"): its ranges kept the zoo detector's
mAP50-95 (54.15 against FP32's 54.08) where ONNX Runtime's `quantize_static` lost 2.9 points on
the same 512 images (`benchmarks/detector_int8.py`, docs/detection.md).
"""
from __future__ import annotations

import io
import logging
import re
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecompress.calibration.readers import model_batches, nncf_dataset, onnx_input
from edgecompress.errors import UserError
from edgecompress.util import need

# "minmax": NNCF's default activation range estimator (min/max statistics); "percentile": the
# mean over batches of the 1e-4 / 1 - 1e-4 quantiles (MEAN_QUANTILE), which drops outliers.
# NNCF has no entropy (KL) calibration.
METHODS = ("minmax", "percentile")


def _import():
    return need("nncf", "nncf"), need("openvino", "nncf")


def ignored_scope(keep_float: Sequence[str]):
    """ONNX layer names -> NNCF scope on the OpenVINO graph.

    OpenVINO's ONNX frontend splits a biased Conv/Gemm named N into `N/WithoutBiases` (the
    convolution or MatMul) and the bias Add named N; NNCF must ignore the weighted op.
    """
    nncf, _ = _import()
    patterns = [f"{re.escape(name)}(/WithoutBiases)?" for name in keep_float]
    return nncf.IgnoredScope(patterns=patterns, validate=False)


def _advanced(nncf, method: str):
    if method == "minmax":
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)


def signed_activations(model):
    """`model` (a QDQ ONNX) with every unsigned quantizer (uint8, zero point 0: NNCF's choice after
    a ReLU under its symmetric preset) made signed INT8 over the same range, its scale x 255 / 127
    (7 bits for a non-negative tensor): TensorRT takes signed INT8 only, and NNCF cannot be told
    to force the sign (its hardware configs reject `signedness_to_force`)."""
    onnx = need("onnx", "onnx")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) == 3]
    uint8 = {n for n, t in inits.items() if t.data_type == onnx.TensorProto.UINT8}
    unsigned = {n.input[2] for n in qdq if n.input[2] in uint8}   # zero points only, not a uint8 weight of the model
    quantizers = [n for n in qdq if n.input[2] in unsigned]
    for name in unsigned:
        z = onnx.numpy_helper.to_array(inits[name])
        if z.any():
            raise ValueError(f"{name}: an unsigned quantizer with a non-zero zero point is not symmetric")
        inits[name].CopyFrom(onnx.numpy_helper.from_array(z.astype(np.int8), name))
    for scale in {n.input[1] for n in quantizers}:
        sc = onnx.numpy_helper.to_array(inits[scale])
        inits[scale].CopyFrom(onnx.numpy_helper.from_array((sc * (255 / 127)).astype(sc.dtype), scale))
    retyped = unsigned | {n.output[0] for n in quantizers if n.op_type == "QuantizeLinear"}
    for info in graph.value_info:   # NNCF lists the zero points' types too
        if info.name in retyped:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return model


def quantize_nncf(src_onnx: str | Path, dst_xml: str | Path, batches: Sequence[np.ndarray], *,
                  method: str = "minmax", symmetric_activations: bool = False,
                  keep_float: Sequence[str] = ()) -> Path:
    """Write an OpenVINO INT8 IR (`dst_xml` + .bin) quantized by `nncf.quantize`."""
    nncf, ov = _import()
    quantized = _quantize(nncf, ov.convert_model(str(src_onnx)), src_onnx, batches, method=method,
                          symmetric_activations=symmetric_activations, scope=ignored_scope(keep_float))
    dst = Path(dst_xml).with_suffix(".xml")
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst


def quantize_nncf_onnx(src_onnx: str | Path, dst_onnx: str | Path, batches: Sequence[np.ndarray], *,
                       method: str = "minmax", symmetric_activations: bool = False,
                       keep_float: Sequence[str] = ()) -> Path:
    """Write a QDQ ONNX (`dst_onnx`) quantized by `nncf.quantize` on the ONNX model; `keep_float`
    names ONNX nodes left in floating point."""
    nncf, onnx = need("nncf", "nncf"), need("onnx", "onnx")
    name, _ = onnx_input(src_onnx)
    quantized = _quantize(nncf, onnx.load(str(src_onnx)), src_onnx, batches, method=method,
                          symmetric_activations=symmetric_activations,
                          scope=nncf.IgnoredScope(names=list(keep_float), validate=False),
                          transform=lambda batch: {name: batch})   # its ONNX engine takes a feed dict
    if symmetric_activations:
        quantized = signed_activations(quantized)
    dst = Path(dst_onnx).with_suffix(".onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(dst))
    return dst


def _quantize(nncf, model, src_onnx: str | Path, batches: Sequence[np.ndarray], *, method: str,
              symmetric_activations: bool, scope, transform=None):
    _, shape = onnx_input(src_onnx)
    batches = model_batches(batches, shape)
    if method not in METHODS:
        raise UserError(f"calibration method {method!r} is not available with NNCF",
                        f"valid with NNCF: {', '.join(METHODS)}")
    # PERFORMANCE: symmetric weights and activations, where a runtime needs them; otherwise NNCF's
    # own default for the model (what a user calling nncf.quantize gets).
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric_activations else None
    with quiet_nncf_info():
        return nncf.quantize(model, nncf_dataset(batches, transform), preset=preset, subset_size=len(batches),
                             ignored_scope=scope, advanced_parameters=_advanced(nncf, method))


@contextmanager
def quiet_nncf_info():
    """NNCF logs every ignored node and quantizer decision at INFO to stdout; keep its warnings.
    Its progress bars ("Statistics collection", rich, drawn on whatever sys.stdout is) would land
    in the run's output: they go nowhere (its logger's handler keeps the real stdout)."""
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)
