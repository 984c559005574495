"""Box geometry and post-processing for anchor-free detectors with raw head outputs.

Raw outputs are [N, 4 + nc, A]: per grid cell 4 raw distances (left, top, right, bottom) and nc
class logits; cells are row-major per stride, strides in increasing order (zoo/detector.py).
Decoding: distance = softplus(raw) * stride from the cell centre; score = sigmoid(logit). A head
whose box values are already distances in strides (Ultralytics' DFL expectation,
inputs/ultralytics.py) says `box="distance"`: the values are only scaled by the stride.
Everything here runs after the engine, in float, identical for every engine compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# how a head's 4 box values become distances from the cell centre, in strides
BOX_ENCODINGS = {
    "softplus": F.softplus,          # zoo/detector.py: raw values, softplus keeps them positive
    "distance": lambda d: d,         # Ultralytics' Detect after its DFL: distances already
}


@dataclass(frozen=True)
class PostprocessConfig:
    conf: float = 0.001      # COCO-style evaluation keeps low-confidence boxes: they still count in AP
    iou: float = 0.7         # NMS overlap threshold (Ultralytics' validation default)
    max_det: int = 100       # COCO's maxDets for the headline AP
    pre_nms: int = 1000      # best candidates per image entering NMS: bounds its cost


def anchor_points(height: int, width: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres [A, 2] (x, y in input pixels) and each cell's stride [A], in the head's order."""
    points, cell_strides = [], []
    for s in strides:
        h, w = height // s, width // s
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], 1).add_(0.5).mul_(s))
        cell_strides.append(torch.full((h * w,), float(s)))
    return torch.cat(points), torch.cat(cell_strides)


def check_raw(raw: torch.Tensor, height: int, width: int, strides: tuple[int, ...]) -> None:
    cells = sum((height // s) * (width // s) for s in strides)
    if raw.ndim != 3 or raw.shape[2] != cells or raw.shape[1] < 5:
        raise ValueError(f"raw head outputs {tuple(raw.shape)} do not match [N, 4 + nc, {cells}] "
                         f"for a {height}x{width} input at strides {strides}")


def decode(raw: torch.Tensor, *, height: int, width: int, strides: tuple[int, ...],
           box: str = "softplus") -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs -> boxes [N, A, 4] (x1, y1, x2, y2 pixels) and class scores [N, A, nc] in [0, 1].
    `box` names the box values' encoding (BOX_ENCODINGS)."""
    check_raw(raw, height, width, strides)
    if box not in BOX_ENCODINGS:
        raise ValueError(f"unknown box encoding {box!r}; valid: {', '.join(BOX_ENCODINGS)}")
    points, stride = anchor_points(height, width, strides)
    raw = raw.float()
    ltrb = BOX_ENCODINGS[box](raw[:, :4].transpose(1, 2)) * stride[None, :, None]
    boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)
    return boxes, raw[:, 4:].transpose(1, 2).sigmoid()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS (torchvision.ops.nms semantics): indices kept, highest score first."""
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class: boxes of different classes are shifted apart so they never overlap."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def postprocess(raw: torch.Tensor, *, height: int, width: int, strides: tuple[int, ...], box: str = "softplus",
                config: PostprocessConfig = PostprocessConfig()) -> list[dict[str, torch.Tensor]]:
    """Raw outputs -> per image {boxes [K, 4] xyxy pixels, scores [K], labels [K]}, after the
    confidence threshold and per-class NMS. One class per cell: its best."""
    boxes, scores = decode(raw, height=height, width=width, strides=strides, box=box)
    out = []
    for b, s in zip(boxes, scores):
        best, labels = s.max(1)
        mask = best > config.conf
        b, best, labels = b[mask], best[mask], labels[mask]
        if len(best) > config.pre_nms:
            top = best.topk(config.pre_nms).indices
            b, best, labels = b[top], best[top], labels[top]
        keep = batched_nms(b, best, labels, config.iou)[:config.max_det]
        out.append({"boxes": b[keep], "scores": best[keep], "labels": labels[keep]})
    return out


def targets_to_boxes(targets: torch.Tensor, *, batch_size: int, height: int, width: int) -> list[dict[str, torch.Tensor]]:
    """Collated targets [M, 6] (image, class, cx, cy, w, h normalised) -> per image
    {boxes [k, 4] xyxy pixels, labels [k]}."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    out = []
    for i in range(batch_size):
        t = targets[targets[:, 0] == i]
        cxcy, wh = t[:, 2:4], t[:, 4:6]
        xyxy = torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1) * scale
        out.append({"boxes": xyxy, "labels": t[:, 1].long()})
    return out
