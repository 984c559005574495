"""The embedded default's data: Fashion-MNIST read from its IDX files, and its fixed split.

The validation split (5,000 training images, fixed by a seed) holds the accuracy budget; the test
set is used only for the final report.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch

from edgecompress.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
VAL_SIZE, SPLIT_SEED = 5000, 0


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


def read(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): uint8 N×H×W images, int64 labels."""
    root = Path(root) if root else DEBIAN_DIR
    if not root.is_dir():
        raise UserError(f"Fashion-MNIST directory {root} does not exist",
                        "apt-get update && apt-get install -y dataset-fashion-mnist")
    x, y = read_idx(root, FILES["train_x"]), read_idx(root, FILES["train_y"]).long()
    tx, ty = read_idx(root, FILES["test_x"]), read_idx(root, FILES["test_y"]).long()
    if len(x) != len(y) or len(tx) != len(ty):
        raise UserError(f"image and label counts differ in {root}", "re-download the data set")
    return x, y, tx, ty
