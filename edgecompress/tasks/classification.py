"""Classification as a task: top-1 in percent, Hinton's distillation loss, torch's default collate.
The same calls the pipeline made before tasks existed, so the classifier path is unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from edgecompress.targets.engines import engine_accuracy
from edgecompress.tasks.base import Run
from edgecompress.training.distill import kd_loss
from edgecompress.training.evaluation import model_accuracy


@dataclass(frozen=True)
class ClassificationTask:
    name: str = field(default="classify", init=False)
    metric: str = field(default="top-1", init=False)
    unit: str = field(default="%", init=False)
    collate: Callable | None = field(default=None, init=False, repr=False)
    finetune_lr: float = field(default=0.01, init=False)

    def evaluate(self, run: Run, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> float:
        return engine_accuracy(run, batches, on_batch=on_batch)

    def evaluate_model(self, model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
        return model_accuracy(model, batches, device=device)

    def objective(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                  images: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
        return kd_loss(student, teacher, targets, temperature=temperature, alpha=alpha)
