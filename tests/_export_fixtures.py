"""Shared tiny artifacts for the exporter/target tests (module-scoped: built once per file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgecompress.exporters import to_onnx
from edgecompress.zoo import create_model


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tiny-resnet").eval()
    # Non-trivial BN statistics so BN folding is actually exercised by the parity checks.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def export_pair(tmp: Path) -> tuple[torch.nn.Module, Path, Path]:
    """(model, FP32 ONNX, QDQ INT8 ONNX) made with ONNX Runtime's static quantizer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    model = tiny_model()
    fp32 = to_onnx(model, tmp / "model.onnx", input_shape=(1, 28, 28))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 1, 28, 28)).astype(np.float32) for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    int8 = tmp / "model_int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return model, fp32, int8


def inputs(n: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)
