"""The offline detection demo set: Fashion-MNIST items pasted on larger canvases, in YOLO format.

Each canvas (grayscale, `imgsz` square, faint noise) holds 1-3 items at random scales and positions;
a box is the tight box of the item's visible pixels, so it fits what the detector can see. Training
canvases take their items from Fashion-MNIST's training part, validation canvases from its fixed
validation part (zoo.fashion_mnist.split_indices), so no item is in both. Same seed, same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecompress.zoo import fashion_mnist

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
INK = 40            # a pixel above this (0..255) is part of the item when measuring its box
MAX_OVERLAP = 0.2   # IoU allowed between two items on one canvas: a hidden item is unlearnable


@dataclass(frozen=True)
class DemoConfig:
    imgsz: int = 64
    min_side: int = 14       # an item is resized from 28x28 to a side in [min_side, max_side]
    max_side: int = 36
    max_objects: int = 3
    noise: float = 12.0      # std of the background noise, in 0..255 grey levels


def make_detection_demo(out_dir: str | os.PathLike, *, train: int = 2000, val: int = 500, seed: int = 0,
                        config: DemoConfig = DemoConfig(), fashion_root: str | os.PathLike | None = None) -> Path:
    """Write OUT_DIR/{images,labels}/{train,val}/ and OUT_DIR/data.yaml; returns the yaml's path."""
    out = Path(out_dir)
    x, y, _, _ = fashion_mnist.read(fashion_root)
    train_idx, val_idx = fashion_mnist.split_indices(len(x), fashion_mnist.VAL_SIZE)
    rng = np.random.default_rng(seed)
    for split, count, pool in (("train", train, train_idx), ("val", val, val_idx)):
        _write_split(out, split, count, x[pool].numpy(), y[pool].numpy(), rng, config)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"# Fashion-MNIST detection demo (seed {seed})\npath: .\ntrain: images/train\n"
                         f"val: images/val\nnames:\n{names}\n")
    return yaml_path


def _write_split(out: Path, split: str, count: int, items: np.ndarray, classes: np.ndarray,
                 rng: np.random.Generator, cfg: DemoConfig) -> None:
    from PIL import Image
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        canvas, rows = compose_canvas(items, classes, rng, cfg)
        stem = f"{split}_{i:05d}"
        Image.fromarray(canvas).save(out / "images" / split / f"{stem}.png")
        (out / "labels" / split / f"{stem}.txt").write_text("".join(
            f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in rows))


def compose_canvas(items: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                   cfg: DemoConfig) -> tuple[np.ndarray, list[tuple]]:
    """One uint8 canvas and its label rows (class, cx, cy, w, h normalised)."""
    s = cfg.imgsz
    canvas = np.clip(rng.normal(0, cfg.noise, (s, s)), 0, 255)
    rows, boxes = [], []
    for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
        k = int(rng.integers(len(items)))
        patch = _resized(items[k], int(rng.integers(cfg.min_side, cfg.max_side + 1)))
        box = _place(patch, boxes, rng, s)
        if box is None:
            continue  # no free spot after a few tries: fewer objects on this canvas
        x0, y0, x1, y1, ox, oy = box
        canvas[oy:oy + patch.shape[0], ox:ox + patch.shape[1]] = np.maximum(
            canvas[oy:oy + patch.shape[0], ox:ox + patch.shape[1]], patch)
        boxes.append((x0, y0, x1, y1))
        rows.append((int(classes[k]), (x0 + x1) / 2 / s, (y0 + y1) / 2 / s, (x1 - x0) / s, (y1 - y0) / s))
    return canvas.astype(np.uint8), rows


def _resized(item: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(item.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def _place(patch: np.ndarray, boxes: list[tuple], rng: np.random.Generator, s: int, tries: int = 10):
    """(x0, y0, x1, y1, ox, oy): the tight box of the patch's ink at a random offset that overlaps
    no earlier box by more than MAX_OVERLAP; None when no try fits."""
    ys, xs = np.nonzero(patch > INK)
    if len(xs) == 0:
        return None
    side = patch.shape[0]
    for _ in range(tries):
        ox, oy = (int(v) for v in rng.integers(0, s - side + 1, size=2))
        box = (ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1)
        if all(_iou(box, b) <= MAX_OVERLAP for b in boxes):
            return (*(int(v) for v in box), ox, oy)
    return None


def _iou(a: tuple, b: tuple) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


CACHE_ENV = "EDGECOMPRESS_CACHE_DIR"   # the latency tables' cache folder; the demo set sits beside them
DEMO_TRAIN, DEMO_VAL = 2000, 500      # small enough that a whole `compress` run fits ~20 min on 2 cores


def cached_demo(*, train: int = DEMO_TRAIN, val: int = DEMO_VAL, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                fashion_root: str | os.PathLike | None = None) -> Path:
    """The demo set's data.yaml, built on first use under the cache folder ($EDGECOMPRESS_CACHE_DIR,
    else ~/.cache/edgecompress) and reused after: built in a scratch folder and renamed into place,
    so an interrupted build is never read as a finished one."""
    import shutil
    import tempfile
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgecompress")
    folder = root / "detection-demo" / f"fashion-mnist-det-seed{seed}-{train}-{val}-{DemoConfig().imgsz}"
    if (folder / "data.yaml").is_file():
        return folder / "data.yaml"
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        make_detection_demo(scratch, train=train, val=val, seed=seed, fashion_root=fashion_root)
        try:
            os.rename(scratch, folder)
        except OSError:   # another run finished first: keep its copy
            if not (folder / "data.yaml").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / "data.yaml"
