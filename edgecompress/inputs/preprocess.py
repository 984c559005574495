"""The model's preprocessing, declared once: input size, resize / centre crop, mean / std.

One frozen `Preprocess` is resolved before any data is read (from `--preprocess` and the flags
that override its fields, else from the zoo checkpoint's metadata, else from the data's kind),
printed at the start of the run and recorded in report.json. Every image the run touches goes
through it: evaluation, BatchNorm recalibration, distillation, INT8 calibration and the latency
inputs (whose shape is the data's input shape, i.e. this one's size).

Order for one image: resize the shorter side to `resize` (aspect kept), centre-crop `crop`×`crop`,
then, when `size` is set and the image is not that size yet, resize it to exactly `size`; then
scale to [0, 1] (image files) and normalise `(x - mean) / std` per channel.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from edgecompress.errors import UserError
from edgecompress.zoo import fashion_mnist as fmnist

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (fmnist.MEAN,), (fmnist.STD,)
FOLDER_STATS = "folder-stats"


@dataclass(frozen=True)
class Preprocess:
    name: str                                   # the preset, "checkpoint:<model>", or "custom"
    size: tuple[int, int] | None = None         # final H, W; None: what resize/crop give (or the data's own)
    resize: int | None = None                   # shorter side, aspect kept
    crop: int | None = None                     # centre crop, square
    mean: tuple[float, ...] | None = None       # None: no normalisation
    std: tuple[float, ...] | None = None
    stats_from_folder: bool = False             # mean/std still to be measured on the training folder

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise UserError(problems[0][0], problems[0][1])

    def _problems(self):
        for flag, v in (("--resize", self.resize), ("--crop", self.crop)):
            if v is not None and v < 1:
                yield f"{flag} {v} is not a positive number of pixels", "e.g. --resize 256 --crop 224"
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            yield f"--input-size {self.size} is not a positive size", "give N or HxW, e.g. --input-size 224"
        if (self.mean is None) != (self.std is None) and not self.stats_from_folder:
            yield "--mean and --std go together", "give both, or a --preprocess preset"
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                yield (f"--mean has {len(self.mean)} values but --std {len(self.std)}",
                       "one value per channel (or one for all channels)")
            if not all(math.isfinite(s) and s > 0 for s in self.std):
                yield f"--std {','.join(map(str, self.std))} has a value that is not positive", "std > 0"
            if not all(math.isfinite(m) for m in self.mean):
                yield f"--mean {','.join(map(str, self.mean))} is not finite", "give numbers"

    @property
    def out_size(self) -> tuple[int, int] | None:
        """The H, W images come out at, when the declaration alone decides it."""
        if self.size:
            return self.size
        if self.crop:
            return (self.crop, self.crop)
        return None

    def geometry(self) -> bool:
        return bool(self.size or self.resize or self.crop)

    def record(self) -> dict:
        """What report.json records (and a zoo checkpoint may declare)."""
        d = asdict(self)
        d.pop("stats_from_folder")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def describe(self) -> str:
        parts = []
        if self.resize:
            parts.append(f"resize shorter side {self.resize}")
        if self.crop:
            parts.append(f"centre crop {self.crop}")
        if self.size:
            parts.append(f"input {self.size[0]}x{self.size[1]}")
        if self.mean is not None:
            parts.append(f"mean {_nums(self.mean)} std {_nums(self.std)}")
        elif self.name == "as-given":
            parts.append("images as the data returns them")
        elif not self.stats_from_folder:
            parts.append("no normalisation")
        return f"{self.name}: " + (", ".join(parts) if parts else "images as given")

    # -- applying it ------------------------------------------------------------------------------

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Geometry then normalisation of one float C×H×W tensor (in-memory data sets)."""
        return self.normalise(self.resize_tensor(x))

    def resize_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize:
            h, w = x.shape[-2:]
            short = min(h, w)
            if short != self.resize:
                x = _interp(x, (round(h * self.resize / short), round(w * self.resize / short)))
        if self.crop:
            x = _centre_crop(x, self.crop)
        if self.size and tuple(x.shape[-2:]) != tuple(self.size):
            x = _interp(x, self.size)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        c = x.shape[-3]
        mean, std = _per_channel(self.mean, c, "--mean"), _per_channel(self.std, c, "--std")
        return (x - mean) / std

    def pil(self, im):
        """Geometry on a PIL image (bilinear, as torchvision's Resize)."""
        from PIL import Image
        if self.resize:
            w, h = im.size
            short = min(w, h)
            if short != self.resize:
                im = im.resize((round(w * self.resize / short), round(h * self.resize / short)), Image.BILINEAR)
        if self.crop:
            w, h = im.size
            c = self.crop
            if c > min(w, h):
                raise UserError(f"--crop {c} is larger than an image of {w}x{h} after resizing",
                                "crop at most the resized size (e.g. --resize 256 --crop 224)")
            left, top = (w - c) // 2, (h - c) // 2
            im = im.crop((left, top, left + c, top + c))
        if self.size and (im.size[1], im.size[0]) != tuple(self.size):
            im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
        return im


def _nums(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _interp(x: torch.Tensor, size) -> torch.Tensor:
    # antialias: downscaling without it aliases (what PIL's bilinear does not)
    return F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def _centre_crop(x: torch.Tensor, c: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if c > min(h, w):
        raise UserError(f"--crop {c} is larger than an image of {w}x{h} after resizing",
                        "crop at most the resized size")
    top, left = (h - c) // 2, (w - c) // 2
    return x[..., top:top + c, left:left + c]


def _per_channel(values, channels: int, flag: str) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise UserError(f"{flag} has {len(values)} values but the images have {channels} channel(s)",
                        "give one value per channel, or one for all")
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


# -- presets and flags --------------------------------------------------------------------------

PRESETS = {
    "imagenet": Preprocess("imagenet", resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "fashion-mnist": Preprocess("fashion-mnist", mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD),
    FOLDER_STATS: Preprocess(FOLDER_STATS, stats_from_folder=True),
    "none": Preprocess("none"),
}


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    h, _, w = str(text).lower().partition("x")
    try:
        size = (int(h), int(w or h))
    except ValueError:
        raise UserError(f"--input-size {text!r} is not N or HxW", "e.g. --input-size 224 or 160x224") from None
    if min(size) < 1:
        raise UserError(f"--input-size {text!r} is not positive", "e.g. --input-size 224")
    return size


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of numbers",
                        f"e.g. {flag} 0.485,0.456,0.406") from None


def unknown_preset(name: str) -> UserError:
    import difflib
    close = difflib.get_close_matches(name, PRESETS, n=1)
    return UserError(f"unknown --preprocess {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                     f"valid: {', '.join(PRESETS)}")


def from_flags(*, preset: str | None, input_size: str | None = None, resize: int | None = None,
               crop: int | None = None, mean: str | None = None, std: str | None = None) -> Preprocess | None:
    """The declaration the flags make, or None when no flag was given (the default then applies)."""
    if preset is None and all(v is None for v in (input_size, resize, crop, mean, std)):
        return None
    if preset is not None and preset not in PRESETS:
        raise unknown_preset(preset)
    base = PRESETS[preset] if preset else Preprocess("custom")
    fields = {"size": parse_size(input_size), "resize": resize, "crop": crop,
              "mean": parse_floats(mean, "--mean"), "std": parse_floats(std, "--std")}
    fields = {k: v for k, v in fields.items() if v is not None}
    if not fields:
        return base
    if "mean" in fields or "std" in fields:
        fields["stats_from_folder"] = False
    return replace(base, name=f"{base.name}+flags" if preset else "custom", **fields)


def from_record(record: dict, *, name: str) -> Preprocess:
    """A zoo checkpoint's declaration: {"resize", "crop", "mean", "std"[, "size"]}."""
    def tup(v):
        return None if v is None else tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    size = record.get("size")
    return Preprocess(name, size=tuple(size) if size else None, resize=record.get("resize"),
                      crop=record.get("crop"), mean=tup(record.get("mean")), std=tup(record.get("std")))
