"""Exporters: pure `src -> dst` converters; the pipeline decides when to call them.

Each declares the tolerance its round-trip test holds it to, next to the function.
Heavy backends are imported inside the functions.
"""
from __future__ import annotations

from edgecompress.registry import lazy_exports

__all__ = ["to_onnx", "onnx_parity", "ort_session", "onnx_to_openvino", "onnx_to_ort",
           "onnx_to_tensorrt", "write_trtexec_script", "tensorrt_has_precision_flags", "is_qdq", "EXPORTERS",
           "ONNX_TOLERANCE", "OPENVINO_TOLERANCE", "OPENVINO_INT8_REL_TOLERANCE", "ORT_TOLERANCE", "TENSORRT_TOLERANCE"]

__getattr__ = lazy_exports(__name__, __all__)   # the names load from catalog.py on first use
