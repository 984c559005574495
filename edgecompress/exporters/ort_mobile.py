"""ONNX -> ONNX Runtime's .ort format (ORT Mobile / minimal builds).

Uses onnxruntime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`), which loads
the model with the graph optimizations a mobile build can replay, drops the x86-only NCHWc
layout transformer for arm targets, and serializes the optimized graph as a flatbuffer.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from edgecompress.errors import InternalError
from edgecompress.exporters.common import existing, need

# Max abs logit difference vs PyTorch when the .ort runs on ONNX Runtime's CPU provider (FP32).
ORT_TOLERANCE = 1e-4


def onnx_to_ort(src: Path | str, dst: Path | str, *, target_platform: str = "arm") -> Path:
    """Convert `src` to `dst` (.ort). target_platform "arm" keeps the model portable to phones."""
    need("onnxruntime", "ort")
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    src, dst = existing(src, "ONNX model"), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "in"
        work.mkdir()
        shutil.copy(src, work / "model.onnx")  # the tool converts every .onnx in a directory
        log = io.StringIO()
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(log):  # the tool prints progress lines
            convert_onnx_models_to_ort(work / "model.onnx", output_dir=Path(tmp) / "out",
                                       optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target_platform)
        made = sorted((Path(tmp) / "out").glob("*.ort"))
        if len(made) != 1:
            raise InternalError(f"ORT converter produced {made}: {log.getvalue()[-500:]}")
        shutil.move(str(made[0]), dst)
    return dst
