"""Calibration data: a fixed sample of the user's TRAINING split, fed to ONNX Runtime and NNCF.

Calibration images never come from the validation split (it holds the accuracy budget) or the
test split (final report only); callers pass `splits.train`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecompress.errors import UserError
from edgecompress.util import need

DEFAULT_COUNT = 512


def calibration_batches(train_dataset, *, count: int = DEFAULT_COUNT, batch_size: int = 32,
                        seed: int = 0, workers: int = 0) -> list[np.ndarray]:
    """`count` images drawn without replacement (seeded) from `train_dataset`, as float32 batches,
    decoded through a DataLoader (`workers` processes for image files). Memory: the `count`
    images, whatever the size of the split.

    Fewer images than asked: all of them are used and a warning says how many.
    """
    if count < 1 or batch_size < 1:
        raise UserError(f"calibration count and batch size must be positive (got {count}, {batch_size})",
                        "ask for at least one image in batches of at least one")
    available = len(train_dataset)
    if available == 0:
        raise UserError("the training split is empty: no calibration images", "check --data")
    if available < count:
        warnings.warn(f"calibration: asked for {count} images but the training split has only "
                      f"{available}; using {available}", UserWarning, stacklevel=2)
        count = available
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count].tolist()
    tensors = getattr(train_dataset, "tensors", None)
    if tensors is not None:  # in memory: index, don't loop
        images = tensors[0][order].numpy().astype(np.float32, copy=False)
        return [images[i:i + batch_size] for i in range(0, count, batch_size)]
    from torch.utils.data import DataLoader, Subset
    loader = DataLoader(Subset(train_dataset, order), batch_size=batch_size, num_workers=workers,
                        collate_fn=_stack_images)
    return list(loader)


def _stack_images(items) -> np.ndarray:
    return np.stack([_image(it) for it in items]).astype(np.float32, copy=False)


def _image(item) -> np.ndarray:
    # Datasets yield (image, label); a bare tensor dataset yields the image alone.
    image = item[0] if isinstance(item, (tuple, list)) else item
    return image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def onnx_input(onnx_path: str | Path) -> tuple[str, tuple[int | str | None, ...]]:
    """Name and shape of the model's single input; symbolic dims come back as their names."""
    onnx = need("onnx", "onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise UserError(f"{onnx_path} has {len(inputs)} inputs; calibration supports one image input",
                        "export the model with a single input tensor")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in dims)


def model_batches(batches: Sequence[np.ndarray], expected: Sequence[int | str | None]) -> list[np.ndarray]:
    """`batches` re-cut to the model's fixed batch size (engines are exported at the batch that
    ships, usually 1), after `check_batches`; a dynamic batch dimension takes them as they are.
    A last partial batch is dropped (it would not fit a fixed-batch model)."""
    check_batches(batches, expected)
    size = expected[0] if expected else None
    if not isinstance(size, int) or size <= 0 or all(len(b) == size for b in batches):
        return list(batches)
    images = np.concatenate(list(batches))
    return [images[i:i + size] for i in range(0, len(images) - size + 1, size)]


def check_batches(batches: Sequence[np.ndarray], expected: Sequence[int | str | None]) -> None:
    """Raise a UserError naming expected vs given shape when a batch does not fit the model input
    (the batch size aside: `model_batches` re-cuts batches to a fixed one)."""
    if not batches:
        raise UserError("no calibration batches were given", "pass images from the training split")
    for batch in batches:
        given = tuple(batch.shape)
        fits = len(given) == len(expected) and all(
            not isinstance(e, int) or e <= 0 or e == g for e, g in zip(expected[1:], given[1:]))
        if not fits:
            shown = ", ".join(["N", *(str(e) if isinstance(e, int) and e > 0 else "?" for e in expected[1:])])
            raise UserError(f"calibration data has shape {given} but the model input is ({shown})",
                            "calibration images must match the model's input (channels, height, width)")


def ort_reader(batches: Sequence[np.ndarray], input_name: str):
    """An onnxruntime `CalibrationDataReader` over `batches`, rewindable for several passes."""
    CalibrationDataReader = need("onnxruntime.quantization", "onnx").CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter = iter(batches)

        def get_next(self):
            batch = next(self._iter, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._iter = iter(batches)

        def __len__(self) -> int:
            return len(batches)

    return _Reader()


def nncf_dataset(batches: Sequence[np.ndarray], transform=None):
    """An `nncf.Dataset` over the same batches the ONNX Runtime reader yields (`transform`: each
    batch to what the model's backend takes)."""
    return need("nncf", "nncf").Dataset(list(batches), transform)
