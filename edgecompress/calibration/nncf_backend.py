"""INT8 post-training quantization with NNCF on the OpenVINO model: the result is an INT8 IR.

NNCF takes the OpenVINO model converted from the FP32 ONNX (its most used and best tuned
backend, with the CPU plugin's quantization patterns), not the ONNX: its output is therefore the
x86 OpenVINO engine itself, not a QDQ ONNX, and the report names this backend.
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


def quantize_nncf(src_onnx: str | Path, dst_xml: str | Path, batches: Sequence[np.ndarray], *,
                  method: str = "minmax", symmetric_activations: bool = False,
                  keep_float: Sequence[str] = ()) -> Path:
    """Write an OpenVINO INT8 IR (`dst_xml` + .bin) quantized by `nncf.quantize`."""
    nncf, ov = _import()
    _, shape = onnx_input(src_onnx)
    batches = model_batches(batches, shape)
    if method not in METHODS:
        raise UserError(f"calibration method {method!r} is not available with NNCF",
                        f"valid with NNCF: {', '.join(METHODS)}")
    # PERFORMANCE: symmetric weights and activations, where a runtime needs them; otherwise NNCF's
    # own default for the model (what a user calling nncf.quantize gets).
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric_activations else None
    with quiet_nncf_info():
        quantized = nncf.quantize(ov.convert_model(str(src_onnx)), nncf_dataset(batches), preset=preset,
                                  subset_size=len(batches), ignored_scope=ignored_scope(keep_float),
                                  advanced_parameters=_advanced(nncf, method))
    dst = Path(dst_xml).with_suffix(".xml")
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst


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
