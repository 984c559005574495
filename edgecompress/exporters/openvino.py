"""ONNX -> OpenVINO IR (model.xml + model.bin): FP32, FP16-compressed weights, or INT8 from QDQ.

A QDQ ONNX (from calibration/) converts to an IR with FakeQuantize nodes, which the CPU plugin
executes with INT8 kernels; no separate OpenVINO quantization pass is needed.
"""
from __future__ import annotations

from pathlib import Path

from edgecompress.exporters.common import existing, need

# Max abs logit difference vs PyTorch for the IR run on CPU at FP32 inference precision.
# FP16-compressed weights: ~1e-3 relative weight error, logits of order 10 -> 2e-2.
OPENVINO_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
# INT8 IR vs the same QDQ ONNX on ONNX Runtime (the quantized reference; vs PyTorch the gap is the
# quantization error itself, which calibration/ accuracy-checks): max abs diff / max |logit|.
OPENVINO_INT8_REL_TOLERANCE = 0.05


def onnx_to_openvino(src: Path | str, dst_xml: Path | str, *, fp16: bool = False) -> Path:
    """Convert `src` (FP32 or QDQ ONNX) to an IR at `dst_xml` (+ .bin next to it)."""
    ov = need("openvino", "openvino")
    src, dst_xml = existing(src, "ONNX model"), Path(dst_xml)
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(src))
    # save_model compresses float weights to FP16 by default; FP32 must be asked for explicitly.
    ov.save_model(model, str(dst_xml), compress_to_fp16=fp16)
    return dst_xml
