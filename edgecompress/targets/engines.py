"""What every built engine is judged by besides its speed: top-1 accuracy over (images, labels) batches."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

Runner = Callable[[np.ndarray], np.ndarray]


def engine_accuracy(run: Runner, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy in percent of a built engine (`run`: NCHW float32 batch -> logits) over
    (images, labels) batches (tensors or arrays); nothing is held."""
    correct = seen = 0
    for x, y in batches:
        logits = np.asarray(run(np.ascontiguousarray(torch.as_tensor(x).numpy(), dtype=np.float32)))
        correct += int((logits.argmax(1) == torch.as_tensor(y).numpy()).sum())
        seen += len(y)
        if on_batch:
            on_batch(seen)
    return 100.0 * correct / max(1, seen)
