"""`--data yolo:data.yaml`: a detection dataset in the YOLO (Ultralytics) layout.

    data.yaml        path: ROOT (optional; relative to the yaml's folder), train: images/train,
                     val: images/val, names: [a, b, ...] or {0: a, 1: b} (or nc: N alone)
    ROOT/images/train/*.png    ROOT/labels/train/*.txt   (one `class cx cy w h` line per object,
                                                          coordinates normalised to [0, 1])

Labels are tiny, so every label file is parsed and checked when the split is opened: a malformed
line stops the run before any training with one line naming the file and the line. Images are
decoded one file at a time in `__getitem__` (streamed, as image folders are). An image without a
label file is a background image (no objects), as in Ultralytics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgecompress.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
COORD_TOLERANCE = 1e-6   # labels written with rounding may sit a hair outside [0, 1]
LABEL_HINT = "each line must be `class cx cy w h` with a class index in [0, nc) and coordinates in [0, 1]"


@dataclass(frozen=True)
class YoloData:
    """What data.yaml declares, with paths resolved."""

    yaml_path: Path
    root: Path
    splits: dict[str, Path]          # split name -> image folder
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def read_data_yaml(path: str | os.PathLike) -> YoloData:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.yaml {path} does not exist", "give the path of the dataset's data.yaml")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", "fix the file's syntax") from exc
    if not isinstance(cfg, dict):
        raise UserError(f"{path} must be a mapping with keys path/train/val/names", "see the Ultralytics data.yaml format")
    root = Path(cfg.get("path") or ".")
    root = root if root.is_absolute() else (path.parent / root)
    splits = {s: root / _folder(cfg[s], s, path) for s in ("train", "val", "test") if cfg.get(s)}
    missing = [s for s in ("train", "val") if s not in splits]
    if missing:
        raise UserError(f"{path} has no {' or '.join(missing)} key", "add `train: images/train` and `val: images/val`")
    return YoloData(path, root, splits, _class_names(cfg, path))


def _folder(value: object, split: str, path: Path) -> str:
    # Ultralytics also accepts a list of folders or a .txt file listing images; not read here yet
    if isinstance(value, (list, tuple)) or str(value).endswith(".txt"):
        raise UserError(f"{path}: {split} must be one image folder (lists and .txt image lists are not supported)",
                        f"point {split} at a folder such as images/{split}")
    return str(value)


def _class_names(cfg: dict, path: Path) -> tuple[str, ...]:
    names, nc = cfg.get("names"), cfg.get("nc")
    if isinstance(names, dict):
        # Ultralytics writes {0: person, 1: bicycle, ...}; the keys must be 0..n-1
        if sorted(int(k) for k in names) != list(range(len(names))):
            raise UserError(f"{path}: names keys must be 0..{len(names) - 1}", "number the classes from 0 without gaps")
        names = [names[k] for k in sorted(names, key=int)]
    if names is None and nc is None:
        raise UserError(f"{path} declares neither names nor nc", "add `names: [cat, dog]` or `nc: 2`")
    if names is None:
        names = [str(i) for i in range(int(nc))]
    if nc is not None and int(nc) != len(names):
        raise UserError(f"{path}: nc is {nc} but names lists {len(names)} classes", "make nc match names, or drop nc")
    return tuple(str(n) for n in names)


def label_dir(images: Path) -> Path:
    """Ultralytics' rule: the last `images` component of the path becomes `labels`; a folder
    without one (`train: train`) keeps its labels in a sibling `labels/<name>`."""
    parts = list(images.parts)
    if "images" not in parts:
        return images.parent / "labels" / images.name
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:])


def parse_label_file(path: Path, num_classes: int) -> torch.Tensor:
    """[n, 5] float32 rows (class, cx, cy, w, h); a bad line is a UserError naming file and line."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            rows.append(_parse_line(line, path, lineno, num_classes))
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def _parse_line(line: str, path: Path, lineno: int, num_classes: int) -> list[float]:
    where = f"{path}:{lineno}"
    fields = line.split()
    if len(fields) != 5:
        cause = "polygon segments are not supported" if len(fields) > 5 and len(fields) % 2 == 1 else "malformed line"
        raise UserError(f"{where}: {cause}: expected 5 values, got {len(fields)}", LABEL_HINT)
    try:
        cls_f, *box = (float(v) for v in fields)
    except ValueError:
        raise UserError(f"{where}: malformed line: not a number in {line.strip()!r}", LABEL_HINT) from None
    if cls_f != int(cls_f) or not 0 <= cls_f < num_classes:
        raise UserError(f"{where}: class {fields[0]} out of range [0, {num_classes})",
                        "fix the label or the names/nc in data.yaml")
    if not all(-COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE for v in box):
        raise UserError(f"{where}: coordinates {' '.join(fields[1:])} outside [0, 1]",
                        "YOLO labels are normalised by the image width and height")
    if box[2] <= 0 or box[3] <= 0:
        raise UserError(f"{where}: box width and height must be > 0 (got {fields[3]} {fields[4]})", LABEL_HINT)
    return [cls_f, *(min(max(v, 0.0), 1.0) for v in box)]


def scan_split(images: Path, num_classes: int) -> tuple[list[str], list[torch.Tensor]]:
    """Image files of one split (sorted) and their parsed labels."""
    if not images.is_dir():
        raise UserError(f"image folder {images} does not exist", "check path/train/val in data.yaml")
    labels = label_dir(images)
    if not labels.is_dir():
        raise UserError(f"label folder {labels} does not exist", "YOLO labels live in labels/ beside images/")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images in {images}", f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}")
    targets = []
    for f in files:
        txt = labels / (f.stem + ".txt")
        targets.append(parse_label_file(txt, num_classes) if txt.is_file() else torch.zeros(0, 5))
    return [str(f) for f in files], targets


class YoloDataset(Dataset):
    """(image [C, imgsz, imgsz] float in [0, 1], targets [n, 5] = class cx cy w h normalised).

    Images are letterboxed to a square `imgsz` as Ultralytics trains and validates them: scaled to
    fit with their aspect ratio kept, centred on grey (114) padding, boxes moved with them; a square
    image is only resized. Holds only file names and small label tensors; picklable for DataLoader
    workers."""

    def __init__(self, files: list[str], targets: list[torch.Tensor], *, imgsz: int, mode: str = "RGB") -> None:
        self.files, self.targets, self.imgsz, self.mode = files, targets, imgsz, mode
        self.images: torch.Tensor | None = None   # uint8 N x C x S x S once `preload` ran
        self.boxes: list[torch.Tensor] | None = None   # the targets in letterboxed coordinates, with `images`

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def preload(self) -> "YoloDataset":
        """Decode every image once into uint8 memory (a small set: the demo's 2,500 64x64 canvases
        are 30 MB), so loaders read it in this process instead of starting workers each pass."""
        if self.images is None:
            decoded = [self._decode(i) for i in range(len(self))]
            self.images = torch.stack([(image * 255).round().to(torch.uint8) for image, _ in decoded])
            self.boxes = [boxes for _, boxes in decoded]
        return self

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return self.images[i].float() / 255.0, self.boxes[i].clone()
        return self._decode(i)

    def _decode(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image i letterboxed, and its targets moved with it."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(self.files[i]) as im:
                im = im.convert(self.mode)
                image, (scale_x, scale_y, pad_x, pad_y) = letterbox(im, self.imgsz)
                arr = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {self.files[i]}: {exc}", "remove or replace the broken file") from exc
        boxes = self.targets[i].clone()
        boxes[:, 1:] *= torch.tensor([scale_x, scale_y, scale_x, scale_y])
        boxes[:, 1:3] += torch.tensor([pad_x, pad_y])
        return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()), boxes


PAD_GREY = 114   # Ultralytics' letterbox fill


def letterbox(im, size: int):
    """(the PIL image scaled to fit `size` x `size` with its aspect kept and centred on grey, and
    (scale_x, scale_y, pad_x, pad_y): normalised box coordinates map as x * scale + pad)."""
    from PIL import Image
    width, height = im.size
    if (width, height) == (size, size):
        return im, (1.0, 1.0, 0.0, 0.0)
    ratio = size / max(width, height)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    canvas = Image.new(im.mode, (size, size), PAD_GREY if im.mode == "L" else (PAD_GREY,) * len(im.getbands()))
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas.paste(im.resize((new_w, new_h), Image.BILINEAR), (left, top))
    return canvas, (new_w / size, new_h / size, left / size, top / size)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, C, H, W] and targets [M, 6] = (image index in batch, class, cx, cy, w, h)."""
    images = torch.stack([im for im, _ in batch])
    rows = [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(batch)]
    return images, torch.cat(rows) if rows else torch.zeros(0, 6)


def yolo_datasets(data_yaml: str | os.PathLike, *, imgsz: int, mode: str = "RGB") -> tuple[YoloData, dict[str, YoloDataset]]:
    """data.yaml -> its declaration and one dataset per split it names (train, val, test)."""
    data = read_data_yaml(data_yaml)
    sets = {}
    for split, images in data.splits.items():
        files, targets = scan_split(images, data.num_classes)
        sets[split] = YoloDataset(files, targets, imgsz=imgsz, mode=mode)
    return data, sets


PRELOAD_BYTES = 256 << 20   # a split smaller than this (as uint8) is decoded once into memory


def yolo_splits(data_yaml: str | os.PathLike, *, imgsz: int, workers: int = 0, name: str | None = None):
    """`--data yolo:data.yaml` as the pipeline's DataSplits: items (image, targets [n, 5]), batches
    through `collate`, `kind` "detect". Small splits are preloaded (uint8 in memory)."""
    from edgecompress.inputs.splits import DataSplits
    data, sets = yolo_datasets(data_yaml, imgsz=imgsz)
    channels = 1 if sets["val"].mode == "L" else 3
    for ds in sets.values():
        if len(ds) * channels * imgsz * imgsz <= PRELOAD_BYTES:
            ds.preload()
    return DataSplits(train=sets["train"], val=sets["val"], test=sets.get("test"), num_classes=data.num_classes,
                      input_shape=(channels, imgsz, imgsz), name=name or f"yolo:{data.yaml_path}",
                      workers=0 if sets["train"].in_memory else workers, collate=collate, kind="detect",
                      classes=data.names)
