"""Ultralytics checkpoints (`--model best.pt`, YOLOv8 / YOLO11 detect) as edgecompress detectors.

A `best.pt` is a pickled dict whose `model` (or `ema`, mid-training) is an Ultralytics
DetectionModel, so unpickling it needs the `ultralytics` package: the optional extra `yolo`
(`bash scripts/setup.sh --yolo`; it needs torchvision and so the full torch build). Without it the
file is still recognised (`is_ultralytics_checkpoint` reads the pickle's global names, it does not
unpickle) and the run stops with one line naming the extra.

`UltralyticsDetector` wraps the DetectionModel's layers and returns what the zoo detector returns,
[N, 4 + nc, A], cells row-major per stride: the 4 box values are the Detect head's DFL
expectation, distances from the cell centre in strides (`box_encoding = "distance"`, decoded by
tasks/boxes.py), and nc class logits. Anchors, scaling to pixels, sigmoid and NMS stay outside the
engine, the same for every engine compared. Only torch is imported here; Ultralytics' own code
runs inside its layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError

EXTRA_HINT = "install the extra: bash scripts/setup.sh --yolo"
UNSUPPORTED_BLOCKS = {"C2PSA", "PSA", "A2C2f"}   # attention blocks (YOLO11, YOLO12)


def is_ultralytics_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a torch.save file naming Ultralytics classes (read without unpickling, so
    without the package)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:   # not a torch.save zip: not ours to judge here
        return False
    return any(name.startswith("ultralytics.") for name in names)


def missing_ultralytics(path: str | Path) -> UserError:
    return UserError(f"{path} is an Ultralytics checkpoint and the ultralytics package is not installed", EXTRA_HINT)


@dataclass
class UltralyticsCheckpoint:
    model: UltralyticsDetector
    imgsz: int | None                 # the training input size (train_args / model.args)
    names: list[str]                  # class names in index order
    notes: list[str] = field(default_factory=list)


def load_ultralytics(path: str | Path) -> UltralyticsCheckpoint:
    """The detector in `path` (float32, trainable, eval mode) and what the checkpoint says about it."""
    try:
        import ultralytics  # noqa: F401  (unpickling needs its classes)
    except ImportError as exc:
        raise missing_ultralytics(path) from exc
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot load {path}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}",
                        "the file is truncated or was written by another ultralytics version") from exc
    source = _detection_model(ckpt, path)
    model = UltralyticsDetector(source)
    args = {**_as_dict(getattr(source, "args", None)), **_as_dict(ckpt.get("train_args") if isinstance(ckpt, dict) else None)}
    return UltralyticsCheckpoint(model=model, imgsz=_imgsz(args.get("imgsz")), names=model.names)


def _detection_model(ckpt: object, path: str | Path) -> nn.Module:
    """The DetectionModel of a checkpoint dict: `ema` when present (Ultralytics' own loader
    prefers it: mid-training checkpoints have model None), else `model`; or a bare model."""
    from ultralytics.nn.tasks import DetectionModel
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if type(model) is not DetectionModel:   # its subclasses segment, pose, OBB, RT-DETR: other heads
        raise UserError(f"{path} holds a {type(model).__name__}, not an Ultralytics DetectionModel",
                        "only detection checkpoints (yolov8n.pt ... yolo11x.pt, your best.pt) are supported")
    from ultralytics.nn.modules.block import DFL
    head = model.model[-1]
    if getattr(head, "end2end", False) or not isinstance(getattr(head, "dfl", None), DFL) or head.cv2 is None:
        # YOLOv10 / YOLO26: one-to-one head (NMS inside, reg_max 1); a fused model: no one-to-many branch
        raise UserError(f"{path} has an end-to-end (NMS-free) or fused head, not supported yet",
                        "use a YOLOv8 or YOLO11 detection checkpoint as training saved it")
    attention = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in UNSUPPORTED_BLOCKS})
    if attention:
        # their split -> attention -> concat is not rewritten for Torch-Pruning (pruning/detection.py),
        # and tracing a YOLO11n as it is took 18 GB before it was stopped
        raise UserError(f"{path} has {', '.join(attention)} blocks (YOLO11 / YOLO12 attention), not supported yet",
                        "use a YOLOv8 detection checkpoint")
    model = model.float()
    for p in model.parameters():   # a finished best.pt is saved with requires_grad off
        p.requires_grad_(True)
    head.dfl.requires_grad_(False)  # fixed 0..reg_max-1 weights: the expectation, not a layer to train
    return model.eval()


def _as_dict(args: object) -> dict:
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def _imgsz(value: object) -> int | None:
    """`imgsz` as trained: an int, or [h, w] (square only here)."""
    if isinstance(value, (list, tuple)):
        value = max(value) if value else None
    return int(value) if value else None


class UltralyticsDetector(nn.Module):
    """An Ultralytics DetectionModel's layers with raw outputs [N, 4 + nc, A] (module docstring).

    Holds only the layers (nn.Modules) and plain data, not the DetectionModel itself, so a run
    directory can load it with torch's weights-only unpickler. The wiring (each layer's inputs,
    which outputs are kept) is copied here, not read from the layers' `f` / `i` attributes: pruning
    replaces C2f layers (pruning/detection.unsplit_c2f) by modules without them."""

    box_encoding = "distance"

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.layers = source.model
        self.sources = [m.f for m in self.layers]
        self.kept = sorted(set(source.save))
        head = self.layers[-1]
        self.strides = tuple(int(s) for s in head.stride.tolist())
        self.num_classes = int(head.nc)
        names = getattr(source, "names", None) or {}
        self.names = [str(names[i]) if i in names else str(i) for i in range(self.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor | None] = []
        *body, head = self.layers
        for i, layer in enumerate(body):
            x = self._inputs(i, x, outputs)
            x = layer(x)
            outputs.append(x if i in self.kept else None)
        return self._head(self._inputs(len(body), x, outputs))

    def _inputs(self, i: int, x, outputs: list):
        src = self.sources[i]
        if src == -1:
            return x
        if isinstance(src, int):
            return outputs[src]
        return [x if j == -1 else outputs[j] for j in src]

    def _head(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Detect's box branch (cv2, 4 x reg_max bins) through its DFL to 4 distances, its class
        branch (cv3) as logits, per level; concatenated over levels as the zoo head does."""
        head = self.layers[-1]
        outs = []
        for i, f in enumerate(feats):
            box = head.dfl(head.cv2[i](f).flatten(2))           # [N, 4, cells]: expected bin = distance
            outs.append(torch.cat([box, head.cv3[i](f).flatten(2)], 1))
        return torch.cat(outs, 2)

    def output_layers(self) -> list[nn.Module]:
        """Layers whose output sizes are the output format (never pruned): each level's last box
        and class conv, and the DFL's fixed conv."""
        head = self.layers[-1]
        return [*(branch[-1] for branch in head.cv2), *(branch[-1] for branch in head.cv3), head.dfl.conv]
