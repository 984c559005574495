"""Fine-tuning a pruned detector: the task's own loss plus distillation from the original's raw
head outputs (issue 28, step 4). The student and the teacher share the output layout because the
head's output convs are never pruned (pruning/detection.head_output_layers).

CPU only for now; the classifier path's device, mixed precision and DDP (training/distill.py) are
the pipeline's to reuse once its fine-tune stage takes a task.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from edgecompress.tasks.detection import DetectionTask


@dataclass(frozen=True)
class DetectorFinetuneConfig:
    steps: int = 200
    lr: float = 1e-3             # AdamW; a trained network: well below the training rate
    weight_decay: float = 5e-4
    task_weight: float = 1.0     # detection loss against the labels
    kd_weight: float = 1.0       # distillation loss against the teacher's raw outputs


def finetune_detector(student: nn.Module, teacher: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                      task: DetectionTask, config: DetectorFinetuneConfig = DetectorFinetuneConfig()) -> list[float]:
    """Train `student` in place for `config.steps` batches (cycling `batches`); returns the losses.
    `teacher` stays in eval mode and is not changed."""
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for images, targets in itertools.islice(_passes(batches), config.steps):
        with torch.no_grad():
            teacher_raw = teacher(images)
        raw = student(images)
        h, w = images.shape[-2:]
        loss = (config.task_weight * task.loss(raw, targets, height=h, width=w)
                + config.kd_weight * task.distill_loss(raw, teacher_raw))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _passes(batches: Iterable):
    """Pass after pass over `batches` (a DataLoader reshuffles each pass); unlike itertools.cycle
    nothing is kept in memory."""
    while True:
        empty = True
        for item in batches:
            empty = False
            yield item
        if empty:
            raise ValueError("no training batches")
