"""What a task is to the pipeline: a score in points, a training objective, how items batch.

The pipeline holds one task object (chosen once from the request, the model and the data, see
`select_task`) and asks it for every accuracy (PyTorch models and built engines alike), for the
loss of probe and final fine-tuning, and for the collate of its batches. Classification is a task
like the others: its score is top-1 in percent and its objective the Hinton distillation loss,
exactly what the pipeline computed before tasks existed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import numpy as np
import torch
from torch import nn

Run = Callable[[np.ndarray], object]          # NCHW float32 batch -> the model's outputs


class Task(Protocol):
    name: str       # "classify" | "detect" | "metric"
    metric: str     # what the score is, as the report names it: "top-1", "mAP50-95", a function's name
    unit: str       # "%" for top-1, "" for points of another metric
    collate: Callable | None   # items -> batch (None: torch's default)
    finetune_lr: float         # the fine-tuning (and probe) learning rate when --lr is not given

    def evaluate(self, run: Run, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> float:
        """The score in points (0..100, higher is better) of `run` over (images, targets) batches."""

    def evaluate_model(self, model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
        """The same score for a PyTorch model."""

    def objective(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                  images: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
        """The fine-tuning loss: `alpha` x distillation from the teacher + (1 - alpha) x the task's own loss."""


def points(task: Task, value: float | None, width: int = 0) -> str:
    """A score as the run prints it: "94.80 %" for top-1, "54.08 mAP50-95" for another metric."""
    if value is None:
        return "n/a"
    return f"{value:{width}.2f} %" if task.unit == "%" else f"{value:{width}.2f} {task.metric}"


def torch_runner(model: nn.Module) -> Run:
    """`run` for a PyTorch model: eval mode, no gradients, CPU."""
    model.eval()

    def run(batch: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.from_numpy(batch))
    return run
