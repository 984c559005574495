"""`--data imagefolder:DIR`: `DIR/train/<class>/*`, `DIR/val/<class>/*` (and optionally `DIR/test/`),
decoded one file at a time through the run's one `Preprocess`."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from edgecompress.errors import UserError
from edgecompress.inputs.loaders import default_workers, loader, seeded_indices
from edgecompress.inputs.preprocess import FOLDER_STATS, PRESETS, Preprocess
from edgecompress.inputs.splits import DataSplits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
STATS_IMAGES = 1000      # training images folder-stats measures mean/std on (seeded sample)


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


class _Raw(Dataset):
    """The images after geometry, before normalisation (module level: workers receive it pickled)."""

    def __init__(self, images: ImageFolderDataset) -> None:
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images.decode(i), 0


def folder_stats(train: ImageFolderDataset, pre: Preprocess, *, workers: int) -> Preprocess:
    """`pre` with the per-channel mean and std of (a seeded sample of) the training images."""
    import numpy as np

    idx = seeded_indices(len(train), STATS_IMAGES, seed=0)
    total, sq, n = None, None, 0
    for x, _ in loader(Subset(_Raw(train), idx), batch_size=64, workers=workers):
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
