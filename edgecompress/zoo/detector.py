"""A small YOLO-style detector (YOLOv8's building blocks, pure torch) for the offline demo.

backbone  Conv-BN-SiLU stem, stride-2 convs, C2f blocks (split -> bottlenecks -> concat), SPPF
neck      PAN-lite: top-down (upsample + concat + C2f) then bottom-up (stride-2 conv + concat + C2f)
head      decoupled and anchor-free, per stride: a box branch (4 raw ltrb values) and a class
          branch (nc logits) per grid cell

`forward` returns the RAW head outputs, [N, 4 + nc, A] with A = sum over strides of (H/s)*(W/s)
cells, row-major per stride, strides in increasing order. Box decoding, the confidence threshold
and NMS live outside the model (tasks/detection.py), so every engine compared runs the same
post-processing in float and an INT8 engine never quantises the decoding.

The block structure is what detector pruning must understand (issue 28): channel groups tied
through C2f's split and concat and through SPPF's concat, the head's output convs (`box_out`,
`cls_out`) whose sizes are fixed, and the bottleneck repeats inside C2f as removable depth.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.registry import Registry

DETECTORS: Registry = Registry("detector")
CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEMO_DATASET = "fashion-mnist-det"   # zoo/detection_demo.py's canvases


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU, 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Convs with an identity shortcut: removable whole (depth) when `add`."""

    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 -> split in two halves -> n bottlenecks chained on the second half, every intermediate
    kept -> concat (2 + n halves) -> cv2 (YOLOv8's C2f)."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split() rather than chunk(): both export to ONNX Split, but split's sizes are explicit.
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, the four tensors concatenated."""

    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = Conv(cin, hidden, 1)
        self.cv2 = Conv(hidden * 4, cout, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DetectHead(nn.Module):
    """Decoupled anchor-free head: per level a box branch and a class branch, raw outputs."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.num_classes, self.strides = num_classes, strides
        self.box = nn.ModuleList(nn.Sequential(Conv(c, hidden, 3), Conv(hidden, hidden, 3)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(Conv(c, hidden, 3), Conv(hidden, hidden, 3)) for c in channels)
        self.box_out = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in channels)
        self.cls_out = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in channels)
        self.init_bias(imgsz=64)

    def init_bias(self, *, imgsz: int) -> None:
        # YOLOv8's prior: about 5 objects per image spread over the cells of a level, so the class
        # BCE starts near its background optimum instead of pushing every cell down at once.
        for conv, s in zip(self.cls_out, self.strides):
            nn.init.constant_(conv.bias, math.log(5 / self.num_classes / (imgsz / s) ** 2))
        for conv in self.box_out:
            nn.init.constant_(conv.bias, 1.0)   # softplus(1) ~ 1.3 strides: a box a few cells wide

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        outs = []
        for i, f in enumerate(feats):
            y = torch.cat([self.box_out[i](self.box[i](f)), self.cls_out[i](self.cls[i](f))], 1)
            outs.append(y.flatten(2))
        return torch.cat(outs, 2)


class TinyYolo(nn.Module):
    """Backbone to stride 16 (two output levels, strides 8 and 16): enough for 64x64 canvases."""

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, int, int, int] = (16, 32, 48, 64),
                 depth: int = 1) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.strides = (8, 16)
        self.num_classes = num_classes
        self.stem = Conv(in_channels, w0, 3, 2)                                # /2
        self.stage1 = nn.Sequential(Conv(w0, w1, 3, 2), C2f(w1, w1, depth))     # /4
        self.stage2 = nn.Sequential(Conv(w1, w2, 3, 2), C2f(w2, w2, depth))     # /8  -> P3
        self.stage3 = nn.Sequential(Conv(w2, w3, 3, 2), C2f(w3, w3, depth), SPPF(w3, w3))  # /16 -> P4
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td = C2f(w3 + w2, w2, depth, shortcut=False)                      # top-down, /8
        self.down = Conv(w2, w2, 3, 2)
        self.bu = C2f(w2 + w3, w3, depth, shortcut=False)                      # bottom-up, /16
        self.head = DetectHead((w2, w3), num_classes, self.strides, hidden=max(w1, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        n3 = self.td(torch.cat([self.up(p4), p3], 1))
        n4 = self.bu(torch.cat([self.down(n3), p4], 1))
        return self.head([n3, n4])


DETECTORS.add("tiny-yolo", lambda *, in_channels=3, num_classes=10: TinyYolo(
    in_channels=in_channels, num_classes=num_classes))
# For fast tests (STYLE 9): same structure, fewer channels.
DETECTORS.add("tiny-yolo-test", lambda *, in_channels=3, num_classes=10: TinyYolo(
    in_channels=in_channels, num_classes=num_classes, widths=(8, 8, 16, 16)))


def create_detector(name: str = "tiny-yolo", *, in_channels: int = 3, num_classes: int = 10) -> TinyYolo:
    return DETECTORS.get(name)(in_channels=in_channels, num_classes=num_classes)


def pretrained_detector(name: str = "tiny-yolo", dataset: str = DEMO_DATASET) -> tuple[TinyYolo, dict]:
    """A zoo detector with its shipped weights (eval mode) and the checkpoint's metadata
    (validation mAP50-95, input size, the training command)."""
    path = CHECKPOINTS / f"{name}_{dataset}.pt"
    if not path.is_file():
        raise UserError(f"no shipped checkpoint for detector {name} on {dataset}",
                        "train one with scripts/train_detector.py")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = create_detector(name, num_classes=ckpt["state_dict"]["head.cls_out.0.weight"].shape[0])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}
