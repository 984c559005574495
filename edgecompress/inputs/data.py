"""Data specs given with `--data`, resolved to `DataSplits` of (float image C×H×W, int label) pairs.

- `fashion-mnist` or `fashion-mnist:DIR`: the embedded default (Debian's IDX files, or DIR);
- `imagefolder:DIR`: `DIR/train/<class>/*`, `DIR/val/<class>/*` (and optionally `DIR/test/`);
- `package.module:function`: returns `(train, val)` or `(train, val, test)` datasets, or a
  `DataSplits`. The current directory is importable, as with `python -m`;
- `yolo:data.yaml`: a detection dataset in the YOLO layout (inputs/yolo.py), images resized to
  `imgsz` and scaled to [0, 1] (no mean / std: the zoo detector takes them so).

Every image goes through the run's one `Preprocess` (inputs/preprocess.py).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from edgecompress.errors import UserError
from edgecompress.inputs.imagefolder import image_folder
from edgecompress.inputs.loaders import default_workers, in_memory, labels_of
from edgecompress.inputs.preprocess import FOLDER_STATS, PRESETS, Preprocess
from edgecompress.inputs.specs import IMPORT_SPEC, call_spec
from edgecompress.inputs.splits import DataSplits
from edgecompress.zoo import fashion_mnist as fmnist

SPEC_HINT = ("use fashion-mnist[:DIR], imagefolder:DIR (with train/ and val/), yolo:data.yaml (detection) "
             "or package.module:function")
DEFAULT_IMGSZ = 64   # detection input side when neither --imgsz nor a shipped checkpoint says


def resolve_data(spec: str | None, *, preprocess: Preprocess | None = None, workers: int | None = None,
                 imgsz: int | None = None) -> DataSplits:
    """`preprocess` None: the data's own default (fashion-mnist: its statistics; image folder:
    folder-stats at the first image's size, said loudly by the caller; a function's data: as given)."""
    spec = spec or "fashion-mnist"
    kind, _, rest = spec.partition(":")
    if kind == "yolo":
        if not rest:
            raise UserError("yolo needs the dataset's data.yaml: yolo:PATH/data.yaml", SPEC_HINT)
        if preprocess is not None:
            raise UserError("detection data is only resized (--imgsz) and scaled to [0, 1]",
                            "drop --preprocess/--input-size/--resize/--crop/--mean/--std; use --imgsz")
        from edgecompress.inputs.yolo import yolo_splits
        return yolo_splits(rest, imgsz=imgsz or DEFAULT_IMGSZ, workers=default_workers() if workers is None else workers)
    if kind == "fashion-mnist":
        return fashion_mnist(rest or None, preprocess=preprocess)
    if kind == "imagefolder":
        if not rest:
            raise UserError("imagefolder needs a directory: imagefolder:DIR", SPEC_HINT)
        return image_folder(Path(rest), preprocess=preprocess, workers=workers)
    if IMPORT_SPEC.match(spec):
        return _from_function(spec, preprocess=preprocess, workers=workers)
    raise UserError(f"cannot resolve the data spec {spec!r}", SPEC_HINT)


def _from_function(spec: str, *, preprocess: Preprocess | None, workers: int | None) -> DataSplits:
    out = call_spec(spec, what="data spec", called="the data function",
                    hint="it must return (train_dataset, val_dataset[, test_dataset])")
    if isinstance(out, DataSplits):
        splits = out
    else:
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise UserError(f"the data function {spec} returned {type(out).__name__}",
                            "it must return (train_dataset, val_dataset[, test_dataset])")
        train, val, test = (*out, None) if len(out) == 2 else out
        splits = describe(train, val, test, name=spec, workers=default_workers() if workers is None else workers)
    return _apply(splits, preprocess or Preprocess("as-given"))


def _apply(splits: DataSplits, pre: Preprocess) -> DataSplits:
    """A function's tensors through the declared preprocessing (geometry and mean/std only: its
    images are already float)."""
    if pre.stats_from_folder:
        raise UserError(f"--preprocess {FOLDER_STATS} measures an image folder; {splits.name} is a function's data",
                        "give --mean/--std, or none")
    if not pre.geometry() and pre.mean is None:
        return replace(splits, preprocess=pre)
    wrap = {s: (None if d is None else Transformed(d, pre)) for s, d in
            (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    x0 = wrap["val"][0][0]
    return replace(splits, **wrap, input_shape=tuple(x0.shape), preprocess=pre)


class Transformed(Dataset):
    """(image, label) items of `base` with `pre` applied to the image."""

    def __init__(self, base: Dataset, pre: Preprocess) -> None:
        self.base, self.pre = base, pre
        self.in_memory = in_memory(base)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.pre.tensor(torch.as_tensor(x, dtype=torch.float32)), y


def describe(train: Dataset, val: Dataset, test: Dataset | None, *, name: str, workers: int = 0) -> DataSplits:
    """Check (image, label) pairs and work out the input shape and the number of classes
    (labels read without keeping the images)."""
    for split, ds in (("train", train), ("val", val)):
        if ds is None or len(ds) == 0:
            raise UserError(f"the {split} split of {name} is empty", "give at least one image per class in each split")
    x0, y0 = _check_sample(val[0], name)
    labels = torch.cat([labels_of(train, workers=workers), labels_of(val, workers=workers)])
    if labels.min() < 0:
        raise UserError(f"{name} has negative labels", "labels must be class indices 0..K-1")
    classes = int(labels.max()) + 1
    if len(labels.unique()) < 2:
        raise UserError(f"{name} has a single class", "a classifier needs at least two classes")
    return DataSplits(train=train, val=val, test=test, num_classes=classes, input_shape=tuple(x0.shape), name=name,
                      workers=0 if in_memory(train) else workers)


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


def fashion_mnist(root: str | None = None, *, preprocess: Preprocess | None = None) -> DataSplits:
    """The embedded default split (zoo/fashion_mnist.py). `preprocess` None or the Fashion-MNIST
    statistics at 28x28: normalised float tensors in memory (TensorDataset). Any other declaration
    (a zoo checkpoint's resize to 64, say): the uint8 images stay in memory and each item is
    preprocessed when read."""
    x, y, tx, ty = fmnist.read(root)
    train_idx, val_idx = fmnist.split_indices(len(x), fmnist.VAL_SIZE)
    pre = preprocess or PRESETS["fashion-mnist"]
    if pre.stats_from_folder:
        raise UserError(f"--preprocess {FOLDER_STATS} measures an image folder, not fashion-mnist",
                        "use --preprocess fashion-mnist (its own statistics) or give --mean/--std")
    x, tx = x.unsqueeze(1), tx.unsqueeze(1)
    if not pre.geometry() and pre.mean == (fmnist.MEAN,) and pre.std == (fmnist.STD,):
        x, tx = fmnist.normalise(x), fmnist.normalise(tx)
        return DataSplits(train=TensorDataset(x[train_idx], y[train_idx]), val=TensorDataset(x[val_idx], y[val_idx]),
                          test=TensorDataset(tx, ty), num_classes=10, input_shape=(1, 28, 28),
                          name="fashion-mnist", preprocess=pre)
    sets = [U8Images(x[train_idx], y[train_idx], pre), U8Images(x[val_idx], y[val_idx], pre), U8Images(tx, ty, pre)]
    return DataSplits(train=sets[0], val=sets[1], test=sets[2], num_classes=10,
                      input_shape=tuple(sets[1][0][0].shape), name="fashion-mnist", preprocess=pre)


class U8Images(Dataset):
    """uint8 N×C×H×W images in memory, scaled to [0, 1] and preprocessed per item."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pre: Preprocess) -> None:
        self.images, self.targets, self.pre = images, labels, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.pre.tensor(self.images[i].float() / 255.0), self.targets[i]
