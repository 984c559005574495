"""What `edgecompress.exporters` exports, imported on first use of one of its names (the package's `__getattr__`)."""
from __future__ import annotations

from edgecompress.exporters.onnx import ONNX_TOLERANCE, onnx_parity, ort_session, to_onnx
from edgecompress.exporters.openvino import OPENVINO_INT8_REL_TOLERANCE, OPENVINO_TOLERANCE, onnx_to_openvino
from edgecompress.exporters.ort_mobile import ORT_TOLERANCE, onnx_to_ort
from edgecompress.exporters.tensorrt import (TENSORRT_TOLERANCE, onnx_to_tensorrt,
                                             tensorrt_has_precision_flags, write_trtexec_script)
from edgecompress.exporters.common import is_qdq
from edgecompress.registry import Registry

# name -> converter, for tools that pick an exporter by name (one registry per extension point).
EXPORTERS: Registry = Registry("exporter")
EXPORTERS.add("onnx", to_onnx)
EXPORTERS.add("openvino", onnx_to_openvino)
EXPORTERS.add("ort", onnx_to_ort)
EXPORTERS.add("tensorrt", onnx_to_tensorrt)
EXPORTERS.add("trtexec-script", write_trtexec_script)
