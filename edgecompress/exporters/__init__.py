"""Exporters: pure `src -> dst` converters; the pipeline decides when to call them.

Each declares the tolerance its round-trip test holds it to, next to the function.
Heavy backends are imported inside the functions.
"""
from __future__ import annotations

__all__ = ["to_onnx", "onnx_parity", "ort_session", "onnx_to_openvino", "onnx_to_ort",
           "onnx_to_tensorrt", "write_trtexec_script", "tensorrt_has_precision_flags", "is_qdq", "EXPORTERS",
           "ONNX_TOLERANCE", "OPENVINO_TOLERANCE", "OPENVINO_INT8_REL_TOLERANCE", "ORT_TOLERANCE", "TENSORRT_TOLERANCE"]


def __getattr__(name: str):
    """The names of `__all__`, imported from `edgecompress.exporters.catalog` on first use (PEP 562): a process that
    only runs an engine (a timing worker, a user's `edgecompress.load`) imports `exporters.common` without PyTorch
    (a fresh interpreter started in 2.4 s with them, 0.5 s with the runtimes alone)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from edgecompress.exporters import catalog
    return getattr(catalog, name)
