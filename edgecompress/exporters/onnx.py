"""PyTorch -> ONNX (opset >= 17, a fixed input shape) -> onnxsim, and a numeric parity check.

Fixed shape: an engine built from a dynamic-batch graph keeps the dynamic dimension (OpenVINO
compiles it as a dynamic model), which measured 14-19 % slower than the same graph at a fixed
1x1x28x28 input on the x86 CPU here (issue 26). Users export with a fixed example input
(torch.onnx.export's default), so the engines that ship and those they are compared with are
exported at the profile's batch; a dynamic batch only when asked (`batch=None`).

Exporter choice: torch 2.13 defaults to the dynamo exporter, which needs `onnxscript` (not a
dependency here) and emits functions/value names that onnxsim and TensorRT's parser handle less
predictably. The TorchScript ("legacy", `dynamo=False`) exporter is still shipped, needs nothing
extra, and produces a flat Conv/BN-folded graph for the CNNs this tool compresses; it warns that
it is deprecated, so that warning is silenced here and the choice is revisited when torch drops it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.errors import InternalError
from edgecompress.exporters.common import existing, in_batches, need

# Max abs difference of logits allowed between PyTorch and ONNX Runtime (FP32 both sides; the
# residual comes from BN folding and different summation order).
ONNX_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def to_onnx(model: nn.Module, dst: Path | str, *, input_shape: tuple[int, ...] | list[int],
            batch: int | None = 1, opset: int = 17, simplify: bool = True) -> Path:
    """Export `model` (eval mode, CPU) for inputs of shape [batch, *input_shape]; `batch=None`:
    a dynamic batch dimension."""
    if opset < 17:
        raise InternalError(f"opset {opset} < 17: LayerNormalization and QDQ per-axis need >= 17")
    onnx = need("onnx", "onnx")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.zeros(batch or 1, *input_shape)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch is None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice, see module doc
        torch.onnx.export(model, (example,), str(dst), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    if simplify:
        _simplify(dst)
    onnx.checker.check_model(str(dst))
    return dst


def _simplify(path: Path) -> None:
    onnx = need("onnx", "onnx")
    onnxsim = need("onnxsim", "onnx")
    model, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise InternalError(f"onnxsim could not validate the simplified {path}")
    onnx.save(model, str(path))


def ort_session(path: Path | str, *, threads: int | None = None):
    """A CPU ONNX Runtime session (also loads .ort files)."""
    ort = need("onnxruntime", "ort")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_parity(model: nn.Module, onnx_path: Path | str, inputs: torch.Tensor | np.ndarray) -> float:
    """Max abs difference between PyTorch's and ONNX Runtime's outputs on `inputs`."""
    sess = ort_session(existing(onnx_path, "ONNX model"))
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    with torch.no_grad():
        want = model.eval().cpu()(x).numpy()
    name, batch = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    got = in_batches(lambda b: sess.run(None, {name: b})[0], batch)(x.numpy())
    return float(np.max(np.abs(want - got)))
