"""Data specs given with `--data`, resolved to `DataSplits` of (float image C×H×W, int label) pairs.

- `fashion-mnist` or `fashion-mnist:DIR`: the embedded default (Debian's IDX files, or DIR);
- `imagefolder:DIR`: `DIR/train/<class>/*`, `DIR/val/<class>/*` (and optionally `DIR/test/`);
- `package.module:function`: returns `(train, val)` or `(train, val, test)` datasets, or a
  `DataSplits`. The current directory is importable, as with `python -m`.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from edgecompress.errors import UserError
from edgecompress.zoo.data import DataSplits, fashion_mnist

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SPEC_HINT = "use fashion-mnist[:DIR], imagefolder:DIR (with train/ and val/) or package.module:function"


def resolve_data(spec: str | None) -> DataSplits:
    spec = spec or "fashion-mnist"
    kind, _, rest = spec.partition(":")
    if kind == "fashion-mnist":
        return fashion_mnist(rest or None)
    if kind == "imagefolder":
        if not rest:
            raise UserError("imagefolder needs a directory: imagefolder:DIR", SPEC_HINT)
        return image_folder(Path(rest))
    if _IMPORT_SPEC.match(spec):
        return _from_function(spec)
    raise UserError(f"cannot resolve the data spec {spec!r}", SPEC_HINT)


def import_object(spec: str, *, what: str):
    """`package.module:attr` -> the object; the current directory is on sys.path like `python -m`."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for the {what} {spec!r}: {exc}",
                        "check the module path; the current directory is importable") from exc
    except Exception as exc:
        raise UserError(f"importing {module_name!r} for the {what} {spec!r} failed: "
                        f"{type(exc).__name__}: {exc}", "fix the module so that it imports") from exc
    if not hasattr(module, attr):
        raise UserError(f"{module_name!r} has no attribute {attr!r} (the {what} {spec!r})",
                        "name a function defined in that module")
    return getattr(module, attr)


def _from_function(spec: str) -> DataSplits:
    fn = import_object(spec, what="data spec")
    try:
        out = fn()
    except Exception as exc:
        raise UserError(f"the data function {spec} raised {type(exc).__name__}: {exc}",
                        "it must return (train_dataset, val_dataset[, test_dataset])") from exc
    if isinstance(out, DataSplits):
        return out
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise UserError(f"the data function {spec} returned {type(out).__name__}",
                        "it must return (train_dataset, val_dataset[, test_dataset])")
    train, val, test = (*out, None) if len(out) == 2 else out
    return describe(train, val, test, name=spec)


def describe(train: Dataset, val: Dataset, test: Dataset | None, *, name: str) -> DataSplits:
    """Check (image, label) pairs and work out the input shape and the number of classes."""
    for split, ds in (("train", train), ("val", val)):
        if ds is None or len(ds) == 0:
            raise UserError(f"the {split} split of {name} is empty", "give at least one image per class in each split")
    x0, y0 = _check_sample(val[0], name)
    labels = torch.cat([as_tensors(train)[1], as_tensors(val)[1]])
    if labels.min() < 0:
        raise UserError(f"{name} has negative labels", "labels must be class indices 0..K-1")
    classes = int(labels.max()) + 1
    if len(labels.unique()) < 2:
        raise UserError(f"{name} has a single class", "a classifier needs at least two classes")
    return DataSplits(train=train, val=val, test=test, num_classes=classes, input_shape=tuple(x0.shape), name=name)


def _check_sample(sample, name: str) -> tuple[torch.Tensor, int]:
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise UserError(f"{name} yields {type(sample).__name__}, not (image, label) pairs",
                        "each item must be (float image tensor C×H×W, int label)")
    x, y = sample
    if not torch.is_tensor(x) or x.dim() != 3 or not x.is_floating_point():
        raise UserError(f"{name} yields images of type {type(x).__name__} "
                        f"{tuple(x.shape) if torch.is_tensor(x) else ''}, not float C×H×W tensors",
                        "each item must be (float image tensor C×H×W, int label)")
    return x, int(y)


def as_tensors(ds: Dataset, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset (or its first `limit` items) as an image tensor and a label tensor."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors[0], ds.tensors[1]
        return (x[:limit], y[:limit].long()) if limit else (x, y.long())
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = [], []
    for i in range(n):
        x, y = ds[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    try:
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
    except RuntimeError as exc:
        raise UserError(f"images in the data set have different shapes ({exc})",
                        "resize every image to one shape") from exc


# -- image folders ----------------------------------------------------------------------------

def image_folder(root: Path) -> DataSplits:
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist", "imagefolder:DIR needs DIR/train/<class>/ and DIR/val/<class>/")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ subfolder", "imagefolder:DIR needs DIR/train/<class>/ and DIR/val/<class>/")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} has {len(classes)} class folder(s)", "a classifier needs at least two classes")
    files = {s: _list_images(root / s, classes) for s in ("train", "val", "test") if (root / s).is_dir()}
    for split in ("train", "val"):
        if not files[split]:
            raise UserError(f"{root / split} holds no images", f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders")
    mode, size = _image_format(files["train"][0][0])
    tensors = {s: _load(f, mode, size) for s, f in files.items()}
    mean = tensors["train"][0].mean(dim=(0, 2, 3), keepdim=True)[0]
    std = tensors["train"][0].std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-6)
    sets = {s: TensorDataset((x - mean) / std, y) for s, (x, y) in tensors.items()}
    return DataSplits(train=sets["train"], val=sets["val"], test=sets.get("test"), num_classes=len(classes),
                      input_shape=tuple(sets["train"].tensors[0].shape[1:]), name=f"imagefolder:{root}")


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    unknown = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise UserError(f"{split_dir} has class folders not in train/: {', '.join(unknown[:5])}",
                        "every class must have a folder in train/")
    out = []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        if folder.is_dir():
            out += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return out


def _image_format(first: Path) -> tuple[str, tuple[int, int]]:
    """Grayscale stays one channel, everything else becomes RGB; all images take the first one's size."""
    from PIL import Image
    with Image.open(first) as im:
        return ("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"), im.size


def _load(files: list[tuple[Path, int]], mode: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    xs = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {path}: {exc}", "remove or replace the broken file") from exc
        xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(xs))
    return x, torch.tensor([label for _, label in files], dtype=torch.long)
