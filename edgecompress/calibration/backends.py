"""The registry of INT8 calibrators (one per PTQ backend) and `quantize_int8`, their one entry point."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgecompress.calibration import nncf_backend, ort_qdq
from edgecompress.errors import UserError
from edgecompress.registry import Registry


@dataclass(frozen=True)
class Calibrator:
    """A PTQ backend: which calibration methods it offers and what it writes."""

    name: str
    methods: tuple[str, ...]
    artifact: str            # "onnx-qdq" (any runtime builds an engine from it) | "openvino-ir"
    suffix: str              # file suffix of the artifact
    quantize: Callable[..., Path]
    label: str = ""          # how reports name it

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


CALIBRATORS: Registry[Calibrator] = Registry("calibration backend")
CALIBRATORS.add("ort", Calibrator("ort", ort_qdq.METHODS, "onnx-qdq", ".onnx", ort_qdq.quantize_ort,
                                 label="ort-qdq"))
CALIBRATORS.add("nncf", Calibrator("nncf", nncf_backend.METHODS, "openvino-ir", ".xml",
                                   nncf_backend.quantize_nncf))
CALIBRATORS.add("nncf-onnx", Calibrator("nncf-onnx", nncf_backend.METHODS, "onnx-qdq", ".onnx",
                                        nncf_backend.quantize_nncf_onnx))

# Every method any backend offers, for CLI choices and error messages.
METHODS = ("minmax", "entropy", "percentile")

# The backends the calibrate stage builds INT8 with, per runtime; it ships the fastest of those
# that keep the accuracy (the search's engines are ORT-QDQ, the first of each).
# openvino: ORT-QDQ first, by benchmarks/int8.py (docs/benchmarks.md "## INT8"): on the 5,000-image
# validation split ORT-QDQ -> OpenVINO kept 95.00 % (ResNet-20, FP32 95.02) and 94.94 % (ResNet-56,
# FP32 94.88) against NNCF's 94.76 % and 94.92 %; NNCF, the target's own tool, is the second.
# tensorrt: NNCF's QDQ ONNX second: on the zoo detector its ranges kept the mAP that
# `quantize_static`'s lost (nncf_backend). ort: NNCF's QDQ ONNX ran 2.0x slower than FP32 on ONNX
# Runtime's CPU kernels (ORT-QDQ 1.11x; `benchmarks/detector_int8.py`): not tried.
BACKENDS = {"openvino": ("ort", "nncf"), "ort": ("ort",), "tensorrt": ("ort", "nncf-onnx")}
# TensorRT supports only symmetric (zero-point 0) INT8 activations.
SYMMETRIC_ACTIVATIONS = {"openvino": False, "ort": False, "tensorrt": True}


def check_method(method: str, backend: str = "ort") -> str:
    """The method, or a UserError listing the valid ones (for this backend)."""
    calibrator = CALIBRATORS.get(backend)
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}", f"valid: {', '.join(METHODS)}")
    if method not in calibrator.methods:
        raise UserError(f"calibration method {method!r} is not available with the {backend} backend",
                        f"valid with {backend}: {', '.join(calibrator.methods)}")
    return method


def quantize_int8(src_onnx: str | Path, dst: str | Path, batches: Sequence[np.ndarray], *,
                  method: str = "minmax", backend: str = "ort", symmetric_activations: bool = False,
                  keep_float: Sequence[str] = ()) -> Path:
    """Quantize the FP32 ONNX `src_onnx` to INT8 with `backend`; returns the artifact written.

    backend "ort" writes a QDQ ONNX at `dst`; "nncf" writes an OpenVINO IR at `dst` with suffix
    .xml. `keep_float` names ONNX layers (node names) left in floating point.
    """
    calibrator = CALIBRATORS.get(backend)
    check_method(method, backend)
    return calibrator.quantize(src_onnx, dst, batches, method=method,
                               symmetric_activations=symmetric_activations, keep_float=tuple(keep_float))
