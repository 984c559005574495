"""Small helpers shared by the exporters: lazy imports with a clear missing-backend message."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from edgecompress.errors import MissingBackendError, UserError


def need(module: str, extra: str) -> ModuleType:
    """Import a heavy backend inside the function that uses it (`import edgecompress` stays light)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(module.split(".")[0], extra) from e


def existing(path: Path | str, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist", "run the export stage first")
    return path


def is_qdq(onnx_path: Path | str) -> bool:
    """True when the ONNX graph carries QuantizeLinear/DequantizeLinear pairs (an INT8 model)."""
    onnx = need("onnx", "onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def in_batches(run: Callable[[np.ndarray], np.ndarray], batch: object) -> Callable[[np.ndarray], np.ndarray]:
    """`run` (an engine built for a fixed batch) applied to inputs of any batch: in chunks of
    `batch`, the last one padded with zeros and cut back. A dynamic batch (`batch` not a positive
    int: a symbolic ONNX dim, -1, None) runs whole."""
    if not isinstance(batch, (int, np.integer)) or batch <= 0:
        return run

    def chunked(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch):
            chunk = np.ascontiguousarray(x[i:i + batch], dtype=np.float32)
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            outs.append(np.asarray(run(chunk))[:batch - pad])
        return np.concatenate(outs)
    return chunked
