"""Run built artifacts in their own runtime: accuracy on the validation split, layer sensitivity.

The runners open artifacts with the one loader (targets/deploy.py), as the targets do.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from edgecompress.calibration.ort_qdq import quantizable_layers, quantize_ort
from edgecompress.targets.engines import engine_accuracy

Runner = Callable[[np.ndarray], np.ndarray]


def ort_runner(onnx_path: str | Path, *, threads: int | None = None) -> Runner:
    """Run an ONNX (FP32 or QDQ INT8) in an ONNX Runtime CPU session, any batch (the one loader)."""
    from edgecompress.targets.deploy import open_engine
    return open_engine(onnx_path, "ort", {"intra_op_num_threads": threads} if threads else {})


def openvino_runner(model_path: str | Path, *, threads: int | None = None) -> Runner:
    """Compile an OpenVINO IR (or ONNX) on CPU at FP32 inference precision (float layers exactly
    as exported, INT8 where the model is quantized), any batch (the one loader)."""
    from edgecompress.targets.deploy import open_engine
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    return open_engine(model_path, "openvino", {**settings, **({"INFERENCE_NUM_THREADS": threads} if threads else {})})


def dataset_arrays(dataset, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N×C×H×W, labels int64 N) of a dataset of (image, label) pairs."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:  # TensorDataset: slice, don't loop
        return tensors[0][:n].numpy().astype(np.float32), tensors[1][:n].numpy().astype(np.int64)
    items = [dataset[i] for i in range(n)]
    images = torch.stack([torch.as_tensor(x) for x, _ in items]).numpy().astype(np.float32)
    return images, np.asarray([int(y) for _, y in items], dtype=np.int64)


def layer_sensitivity(fp32_onnx: str | Path, calib_batches: Sequence[np.ndarray],
                      probe_inputs: Sequence[np.ndarray], *, method: str = "minmax",
                      symmetric_activations: bool = False,
                      layers: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """Rank layers, most harmful first, by the error INT8 causes when ONLY that layer is quantized.

    Score: mean squared error of the logits against FP32 on `probe_inputs` (a few validation
    batches), divided by the FP32 logits' variance. Measured with ONNX Runtime on the QDQ ONNX
    (the layer's weights, input and output in INT8, everything else float), whatever the target:
    the ranking only orders the fallback; the accuracy that counts is measured on the target.
    """
    layers = list(layers) if layers is not None else quantizable_layers(fp32_onnx)
    inputs = np.concatenate(list(probe_inputs))
    reference = ort_runner(fp32_onnx)(inputs)
    scale = float(reference.var()) or 1.0
    scores = []
    with tempfile.TemporaryDirectory(prefix="ec-sensitivity-") as tmp:
        cache = Path(tmp) / "ranges.json"  # calibrate once, reuse the ranges for every layer
        for i, layer in enumerate(layers):
            dst = quantize_ort(fp32_onnx, Path(tmp) / f"only_{i}.onnx", calib_batches, method=method,
                               symmetric_activations=symmetric_activations, only=[layer], cache=cache)
            error = float(((ort_runner(dst)(inputs) - reference) ** 2).mean()) / scale
            scores.append((layer, error))
    return sorted(scores, key=lambda s: -s[1])



def artifact_evaluator(*, fp32_onnx: str | Path, work_dir: str | Path,
                       calib_batches: Sequence[np.ndarray], val_images: np.ndarray | None = None,
                       val_labels: np.ndarray | None = None, build: Callable[[Path, str, Path], object],
                       run: Callable[[object], Runner], measure: Callable[[object], float | None],
                       backend: str = "ort", method: str = "minmax",
                       symmetric_activations: bool = False,
                       val_batches: Callable[[], Iterable] | None = None,
                       score: Callable[[Runner, Iterable], float] = engine_accuracy):
    """`evaluate(precision, keep_float)` for `PrecisionSelector`, over a target's own calls.

    Validation data: `val_batches()` -> (images, labels) batches, streamed on every evaluation
    (the pipeline's loader), or the arrays `val_images` / `val_labels` held in memory.

    INT8: quantize with `backend` (keeping `keep_float` layers float), then `build(artifact,
    "int8", dir)`; float precisions: `build(fp32_onnx, precision, dir)`. Accuracy is then measured
    by running the built engine (`run(built)`) on the validation arrays and scoring its outputs with
    `score(run, batches)` (top-1 by default; the pipeline passes its task's), latency by `measure(built)`.
    For a Target: build=lambda src, p, d: target.build(src, d, precision=p), run=target.runner,
    measure=lambda b: target.measure(b).median_ms.
    """
    from edgecompress.calibration.backends import CALIBRATORS, quantize_int8
    calibrator = CALIBRATORS.get(backend)
    root = Path(work_dir)

    def evaluate(precision: str, keep_float: tuple[str, ...]) -> tuple[float, float | None, dict]:
        out = root / (precision if not keep_float else f"{precision}_float{len(keep_float)}")
        out.mkdir(parents=True, exist_ok=True)
        src, details = Path(fp32_onnx), {"backend": "none"}
        if precision == "int8":
            src = quantize_int8(fp32_onnx, out / f"model_int8{calibrator.suffix}", calib_batches,
                                method=method, backend=backend,
                                symmetric_activations=symmetric_activations, keep_float=keep_float)
            details = {"backend": calibrator.label, "method": method,
                       "symmetric_activations": symmetric_activations}
        built = build(src, precision, out)
        batches = val_batches() if val_batches is not None else array_batches(val_images, val_labels)
        acc = score(run(built), batches)
        return acc, measure(built), {**details, "artifact": str(src), "built": built}

    return evaluate


def array_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int = 250):
    """(images, labels) batches of arrays held in memory."""
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size], labels[i:i + batch_size]
