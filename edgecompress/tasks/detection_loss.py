"""Training and distillation losses for anchor-free detectors on raw head outputs (boxes.py).

Assignment is centre-based (FCOS/YOLOX's centre prior, no learned matching): a cell is positive
for an object when its centre lies inside the object's box and within `radius` strides of the
box centre; a cell claimed by several objects takes the smallest; every object gets at least its
nearest cell, so a box smaller than a stride is still learnt. Box loss: 1 - GIoU on positives.
Class loss: BCE on every cell and class, summed and divided by the number of positives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgecompress.tasks.boxes import anchor_points, check_raw, decode, targets_to_boxes


@dataclass(frozen=True)
class LossConfig:
    radius: float = 2.5       # centre prior, in strides
    box_weight: float = 5.0   # GIoU loss is ~0..2 per positive, class BCE sums over classes
    cls_weight: float = 1.0


def assign(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor, radius: float) -> torch.Tensor:
    """Per cell, the index of the object it learns, or -1 for background. gt_boxes: [M, 4] xyxy."""
    if len(gt_boxes) == 0:
        return torch.full((len(points),), -1, dtype=torch.long)
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = (points[:, None, :] - centre[None]).abs() / strides[:, None, None]     # [A, M, 2] in strides
    near = (dist < radius).all(-1)
    candidate = inside & near
    candidate[dist.norm(dim=-1).argmin(0), torch.arange(len(gt_boxes))] = True
    area = (gt_boxes[:, 2:] - gt_boxes[:, :2]).prod(-1)
    cost = area[None].expand(len(points), -1).masked_fill(~candidate, float("inf"))
    gt_index = cost.argmin(1)
    gt_index[~candidate.any(1)] = -1
    return gt_index


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired xyxy boxes [K, 4] -> [K]."""
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(-1)
    return inter / union.clamp(min=1e-9) - (hull - union) / hull.clamp(min=1e-9)


def detection_loss(raw: torch.Tensor, targets: torch.Tensor, *, height: int, width: int, strides: tuple[int, ...],
                   box: str = "softplus", config: LossConfig = LossConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of raw outputs [N, 4 + nc, A] (box values encoded as `box` says) against collated
    targets [M, 6]; and its parts."""
    check_raw(raw, height, width, strides)
    points, cell_strides = anchor_points(height, width, strides)
    boxes, _ = decode(raw, height=height, width=width, strides=strides, box=box)
    logits = raw[:, 4:].transpose(1, 2)
    cls_target = torch.zeros_like(logits)
    pred, matched = [], []
    for i, gt in enumerate(targets_to_boxes(targets, batch_size=len(raw), height=height, width=width)):
        gi = assign(points, cell_strides, gt["boxes"], config.radius)
        pos = gi >= 0
        cls_target[i, pos, gt["labels"][gi[pos]]] = 1.0
        pred.append(boxes[i, pos])
        matched.append(gt["boxes"][gi[pos]])
    pred, matched = torch.cat(pred), torch.cat(matched)
    n_pos = max(len(pred), 1)
    box = (1 - giou(pred, matched)).sum() / n_pos if len(pred) else raw.sum() * 0
    cls = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / n_pos
    total = config.box_weight * box + config.cls_weight * cls
    return total, {"box": float(box.detach()), "cls": float(cls.detach()), "positives": float(len(pred))}


def detection_distill_loss(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 1.0,
                           box_weight: float = 1.0) -> torch.Tensor:
    """Distillation from a teacher's raw head outputs (same layout) into a student's.

    Classes: binary KL between sigmoid(teacher/T) and sigmoid(student/T) per cell and class (the
    sigmoid analogue of Hinton's softmax KL; T² keeps its gradient scale). Boxes: squared error of
    the raw box outputs, weighted per cell by the teacher's best class score, because a background
    cell's box is meaningless and there are far more of them than objects."""
    if student.shape != teacher.shape:
        raise ValueError(f"student outputs {tuple(student.shape)} and teacher outputs {tuple(teacher.shape)} differ")
    teacher = teacher.detach()
    t = temperature
    p = torch.sigmoid(teacher[:, 4:] / t)
    s_logit = student[:, 4:] / t
    # KL(p || q) = BCE(q_logit, p) - H(p); the entropy term keeps the loss at 0 when they agree
    entropy = F.binary_cross_entropy(p, p, reduction="none")
    kl = (F.binary_cross_entropy_with_logits(s_logit, p, reduction="none") - entropy).mean() * t * t
    weight = torch.sigmoid(teacher[:, 4:]).amax(1)                                  # [N, A]
    box_err = (student[:, :4] - teacher[:, :4]).pow(2).mean(1)                      # [N, A]
    box = (weight * box_err).sum() / weight.sum().clamp(min=1e-9)
    return kl + box_weight * box
