"""What every stage reads the data through: train / validation / test datasets and their facts.

Everything streams through loaders (inputs/loaders.py): decoded by worker processes for files,
read in this process for tensors in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset

from edgecompress.inputs.loaders import BatchStream, loader, seeded_indices

EVAL_BATCH = 250   # images per evaluation batch (PyTorch and engines)


@dataclass(frozen=True)
class DataSplits:
    """Train (minus validation), validation and optional test datasets of (image, label) pairs."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]  # C, H, W
    name: str
    preprocess: Any = None        # the inputs.preprocess.Preprocess these images went through
    workers: int = 0              # DataLoader worker processes (0: items are in memory)
    collate: Callable | None = None   # items -> batch (None: torch's default; detection: inputs.yolo.collate)
    kind: str = "classify"        # what the labels are: "classify" (class indices) or "detect" (boxes)
    classes: tuple[str, ...] = () # class names, where the data declares them (data.yaml)

    def split(self, name: str) -> Dataset | None:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def has(self, name: str) -> bool:
        ds = self.split(name)
        return ds is not None and len(ds) > 0

    def batches(self, split: str = "val", *, batch_size: int = EVAL_BATCH):
        """(images, labels) batches of a split in order, decoded by the loader's workers."""
        return loader(self.split(split), batch_size=batch_size, workers=self.workers, collate=self.collate)

    def images(self, n: int, split: str = "val") -> torch.Tensor:
        """The first `n` images of a split (parity checks, sensitivity, latency inputs)."""
        ds = self.split(split)
        x, _ = next(iter(loader(Subset(ds, range(min(n, len(ds)))), batch_size=n, workers=0, collate=self.collate)))
        return x

    def train_batches(self, *, count: int, batch_size: int, seed: int) -> BatchStream:
        """`count` batches of training images drawn without replacement, fixed by `seed`: a
        re-iterable `BatchStream` (decoded on each pass, never held), `[:k]` for the first k."""
        idx = seeded_indices(len(self.train), count * batch_size, seed)
        return BatchStream(self.train, idx, batch_size=batch_size, workers=self.workers, collate=self.collate)
