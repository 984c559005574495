"""Data specs given with `--data`, resolved to `DataSplits` of (float image C×H×W, int label) pairs.

- `fashion-mnist` or `fashion-mnist:DIR`: the embedded default (Debian's IDX files, or DIR);
- `imagefolder:DIR`: `DIR/train/<class>/*`, `DIR/val/<class>/*` (and optionally `DIR/test/`);
- `package.module:function`: returns `(train, val)` or `(train, val, test)` datasets, or a
  `DataSplits`. The current directory is importable, as with `python -m`.

Nothing is materialised: image folders are `ImageFolderDataset`s that decode one file per item
(read through `DataLoader`s with worker processes, `loader`), a function's datasets are read item by
item the same way, and only the small embedded default lives in memory. Every image goes through
the run's one `Preprocess` (pipeline/preprocess.py).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from edgecompress.errors import UserError
from edgecompress.pipeline.preprocess import FOLDER_STATS, PRESETS, Preprocess
from edgecompress.zoo.data import DataSplits, fashion_mnist

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SPEC_HINT = "use fashion-mnist[:DIR], imagefolder:DIR (with train/ and val/) or package.module:function"
STATS_IMAGES = 1000      # training images folder-stats measures mean/std on (seeded sample)
MAX_WORKERS = 4


def resolve_data(spec: str | None, *, preprocess: Preprocess | None = None, workers: int | None = None) -> DataSplits:
    """`preprocess` None: the data's own default (fashion-mnist: its statistics; image folder:
    folder-stats at the first image's size, said loudly by the caller; a function's data: as given)."""
    spec = spec or "fashion-mnist"
    kind, _, rest = spec.partition(":")
    if kind == "fashion-mnist":
        return fashion_mnist(rest or None, preprocess=preprocess)
    if kind == "imagefolder":
        if not rest:
            raise UserError("imagefolder needs a directory: imagefolder:DIR", SPEC_HINT)
        return image_folder(Path(rest), preprocess=preprocess, workers=workers)
    if _IMPORT_SPEC.match(spec):
        return _from_function(spec, preprocess=preprocess, workers=workers)
    raise UserError(f"cannot resolve the data spec {spec!r}", SPEC_HINT)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores - 1))


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


# -- loaders ----------------------------------------------------------------------------------

def in_memory(ds: Dataset) -> bool:
    """Items are cheap to get (no decoding): read in this process, no workers."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return isinstance(ds, TensorDataset) or bool(getattr(ds, "in_memory", False))


def loader(ds: Dataset, *, batch_size: int, workers: int = 0, shuffle: bool = False, seed: int = 0,
           sampler=None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over `ds`: worker processes for files, none for tensors in memory.
    Shuffled order is fixed by `seed`."""
    workers = 0 if in_memory(ds) else workers
    gen = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, generator=gen,
                      sampler=sampler, drop_last=drop_last, num_workers=workers,
                      persistent_workers=False, prefetch_factor=2 if workers else None)


class BatchStream:
    """Fixed batches of one dataset's images (seeded indices), decoded again on every pass, never
    held: what `ctx.train_batches` gives importance, BatchNorm recalibration and INT8 calibration.
    Re-iterable; `[:k]` is the first k batches; `list(stream)` materialises (small counts only)."""

    def __init__(self, ds: Dataset, indices: list[int], *, batch_size: int, workers: int = 0) -> None:
        self.ds, self.indices, self.batch_size, self.workers = ds, list(indices), batch_size, workers

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for x, _ in loader(Subset(self.ds, self.indices), batch_size=self.batch_size, workers=self.workers):
            yield x

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("BatchStream slices take consecutive batches")
            b = self.batch_size
            return BatchStream(self.ds, self.indices[start * b:stop * b], batch_size=b, workers=self.workers)
        i = range(len(self))[key]
        chunk = self.indices[i * self.batch_size:(i + 1) * self.batch_size]
        return torch.stack([torch.as_tensor(self.ds[j][0], dtype=torch.float32) for j in chunk])


def seeded_indices(n: int, count: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(n, count)].tolist()


# -- a function's data sets ---------------------------------------------------------------------

def _from_function(spec: str, *, preprocess: Preprocess | None, workers: int | None) -> DataSplits:
    fn = import_object(spec, what="data spec")
    try:
        out = fn()
    except Exception as exc:
        raise UserError(f"the data function {spec} raised {type(exc).__name__}: {exc}",
                        "it must return (train_dataset, val_dataset[, test_dataset])") from exc
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


def labels_of(ds: Dataset, *, workers: int = 0) -> torch.Tensor:
    """All labels of `ds`: from its tensors / `targets` when it has them, else read item by item
    (through a loader, images dropped batch by batch)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].long()
    for attr in ("targets", "labels"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            return torch.as_tensor(list(values) if not torch.is_tensor(values) else values).long()
    out = []
    for batch in loader(ds, batch_size=256, workers=workers):
        out.append(torch.as_tensor(batch[1]).long().reshape(-1))
    return torch.cat(out)


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
    """The whole dataset (or its first `limit` items) as an image tensor and a label tensor.
    Only for small counts (a model check, tests): the pipeline streams through `loader`."""
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
                        "resize every image to one shape (--input-size)") from exc


# -- image folders ----------------------------------------------------------------------------

class ImageFolderDataset(Dataset):
    """Image files decoded one at a time: PIL open -> mode -> geometry -> [0, 1] -> mean/std.
    Holds only the file list; picklable for DataLoader workers."""

    def __init__(self, files: list[tuple[Path, int]], *, mode: str, pre: Preprocess) -> None:
        self.files, self.mode, self.pre = [str(p) for p, _ in files], mode, pre
        self.targets = [label for _, label in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.pre.normalise(self.decode(i)), self.targets[i]

    def decode(self, i: int) -> torch.Tensor:
        """The image after geometry, in [0, 1], before mean/std."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError
        path = self.files[i]
        try:
            with Image.open(path) as im:
                arr = np.asarray(self.pre.pil(im.convert(self.mode)), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {path}: {exc}", "remove or replace the broken file") from exc
        return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def image_folder(root: Path, *, preprocess: Preprocess | None = None, workers: int | None = None) -> DataSplits:
    files, classes = _folder_files(root)
    mode, first_size = _image_format(files["train"][0][0])
    pre = preprocess or PRESETS[FOLDER_STATS]
    if pre.mean is not None and len(pre.mean) == 3:
        mode = "RGB"  # a three-channel declaration (ImageNet's): grayscale files become RGB
    if pre.out_size is None and not pre.resize:
        # images of other sizes are resized to one: the declared size, else the first image's
        pre = replace(pre, size=(first_size[1], first_size[0]))
    workers = default_workers() if workers is None else workers
    if pre.stats_from_folder:
        pre = folder_stats(ImageFolderDataset(files["train"], mode=mode, pre=pre), pre, workers=workers)
    sets = {s: ImageFolderDataset(f, mode=mode, pre=pre) for s, f in files.items()}
    x0 = sets["val"][0][0]
    return DataSplits(train=sets["train"], val=sets["val"], test=sets.get("test"), num_classes=len(classes),
                      input_shape=tuple(x0.shape), name=f"imagefolder:{root}", preprocess=pre, workers=workers)


def folder_stats(train: ImageFolderDataset, pre: Preprocess, *, workers: int) -> Preprocess:
    """`pre` with the per-channel mean and std of (a seeded sample of) the training images."""
    import numpy as np

    class _Raw(Dataset):  # the images after geometry, before normalisation
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return train.decode(i), 0

    idx = seeded_indices(len(train), STATS_IMAGES, seed=0)
    total, sq, n = None, None, 0
    for x, _ in loader(Subset(_Raw(), idx), batch_size=64, workers=workers):
        x = x.double()
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, sq = (s, q) if total is None else (total + s, sq + q)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = ((sq / n - mean * mean).clamp_min(0) * n / max(1, n - 1)).sqrt().clamp_min(1e-6)
    return replace(pre, mean=tuple(np.round(mean.numpy(), 6).tolist()), std=tuple(np.round(std.numpy(), 6).tolist()),
                   stats_from_folder=False, name=FOLDER_STATS if pre.name == FOLDER_STATS else pre.name)


def _folder_files(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
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
    if "test" in files and not files["test"]:
        del files["test"]
    for split in files.values():
        _check_headers(split)
    return files, classes


def _check_headers(files: list[tuple[Path, int]]) -> None:
    """Open every file's header (a few bytes each, nothing decoded): a file that is no image is
    found now, not by a loader worker in the middle of the search."""
    from PIL import Image, UnidentifiedImageError
    for path, _ in files:
        try:
            with Image.open(path):
                pass
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {path}: {exc}", "remove or replace the broken file") from exc


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
    """Grayscale stays one channel, everything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(first) as im:
            return ("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"), im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot read image {first}: {exc}", "remove or replace the broken file") from exc


# -- the run's inputs -----------------------------------------------------------------------------

def declared_preprocess(config) -> Preprocess | None:
    """The flags' declaration; else a shipped zoo checkpoint's `"preprocess"` metadata (used with
    its shipped weights only); else None (the data's own default)."""
    pre = config.declared_preprocess()
    if pre is not None:
        return pre
    from edgecompress import zoo
    name = config.model or "resnet20"
    if config.weights is None and name in zoo.MODELS:
        path = zoo.CHECKPOINTS / f"{name}_fashion-mnist.pt"
        if path.is_file():
            record = torch.load(path, map_location="cpu", weights_only=True).get("preprocess")
            if record:
                from edgecompress.pipeline.preprocess import from_record
                return from_record(record, name=f"checkpoint:{name}")
    return None


def resolve_inputs(config):
    """(DataSplits in the run's preprocessing, LoadedModel, notes to record): the same on every rank."""
    from edgecompress.pipeline.models import resolve_model
    pre = declared_preprocess(config)
    data = resolve_data(config.data, preprocess=pre, workers=config.data_workers)
    notes = []
    if pre is None and data.name.startswith("imagefolder:"):
        notes.append(f"no preprocessing declared: images are normalised with the training folder's own statistics "
                     f"({data.preprocess.describe()}); declare the model's own with --preprocess "
                     f"(e.g. imagenet) or --input-size/--resize/--crop/--mean/--std")
    loaded = resolve_model(config.model, weights=config.weights, data=data)
    return data, loaded, notes
