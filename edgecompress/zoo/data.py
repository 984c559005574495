"""Data for the embedded default: Fashion-MNIST read from its IDX files, split and normalised.

The validation split (5,000 training images, fixed by a seed) holds the accuracy budget; the test
set is used only for the final report.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from edgecompress.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
VAL_SIZE, SPLIT_SEED = 5000, 0


@dataclass(frozen=True)
class DataSplits:
    """Train (minus validation), validation and optional test datasets of (image, label) pairs."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]  # C, H, W
    name: str
    preprocess: Any = None        # the pipeline's Preprocess these images went through
    workers: int = 0              # DataLoader worker processes (0: items are in memory)


def _open(root: Path, stem: str):
    for name in (stem, stem + ".gz"):
        path = root / name
        if path.is_file():
            return gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")
    raise UserError(f"Fashion-MNIST file {stem}[.gz] not found in {root}",
                    "apt-get install -y dataset-fashion-mnist, or give --data fashion-mnist:DIR "
                    "with the four official IDX files")


def read_idx(root: Path, stem: str) -> torch.Tensor:
    """Read one IDX file (magic, dims, uint8 payload) into a uint8 tensor."""
    with _open(root, stem) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise UserError(f"{root / stem} is not an IDX file of unsigned bytes", "re-download the data set")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    payload = raw[4 + 4 * ndim:]
    expected = 1
    for d in dims:
        expected *= d
    if len(payload) != expected:
        raise UserError(f"{root / stem} is truncated ({len(payload)} of {expected} bytes)",
                        "re-download the data set")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(dims)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    return ((images_u8.float() / 255.0) - MEAN) / STD


def split_indices(n: int, val_size: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed permutation: the first `val_size` indices are validation, the rest training."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def fashion_mnist(root: str | os.PathLike | None = None, *, preprocess=None) -> DataSplits:
    """`preprocess` None or the Fashion-MNIST statistics at 28x28: normalised float tensors in
    memory (TensorDataset). Any other declaration (a zoo checkpoint's resize to 64, say): the
    uint8 images stay in memory and each item is preprocessed when read."""
    root = Path(root) if root else DEBIAN_DIR
    if not root.is_dir():
        raise UserError(f"Fashion-MNIST directory {root} does not exist",
                        "apt-get update && apt-get install -y dataset-fashion-mnist")
    x, y = read_idx(root, FILES["train_x"]), read_idx(root, FILES["train_y"]).long()
    tx, ty = read_idx(root, FILES["test_x"]), read_idx(root, FILES["test_y"]).long()
    if len(x) != len(y) or len(tx) != len(ty):
        raise UserError(f"image and label counts differ in {root}", "re-download the data set")
    train_idx, val_idx = split_indices(len(x), VAL_SIZE)
    from edgecompress.pipeline.preprocess import PRESETS
    pre = preprocess or PRESETS["fashion-mnist"]
    if pre.stats_from_folder:
        raise UserError("--preprocess folder-stats measures an image folder, not fashion-mnist",
                        "use --preprocess fashion-mnist (its own statistics) or give --mean/--std")
    if not pre.geometry() and pre.mean == (MEAN,) and pre.std == (STD,):
        x, tx = normalise(x).unsqueeze(1), normalise(tx).unsqueeze(1)
        return DataSplits(train=TensorDataset(x[train_idx], y[train_idx]),
                          val=TensorDataset(x[val_idx], y[val_idx]),
                          test=TensorDataset(tx, ty), num_classes=10, input_shape=(1, 28, 28),
                          name="fashion-mnist", preprocess=pre)
    x, tx = x.unsqueeze(1), tx.unsqueeze(1)
    sets = [U8Images(x[train_idx], y[train_idx], pre), U8Images(x[val_idx], y[val_idx], pre), U8Images(tx, ty, pre)]
    return DataSplits(train=sets[0], val=sets[1], test=sets[2], num_classes=10,
                      input_shape=tuple(sets[1][0][0].shape), name="fashion-mnist", preprocess=pre)


class U8Images(Dataset):
    """uint8 N×C×H×W images in memory, scaled to [0, 1] and preprocessed per item."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pre) -> None:
        self.images, self.targets, self.pre = images, labels, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.pre.tensor(self.images[i].float() / 255.0), self.targets[i]
