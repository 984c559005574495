"""The run's one task, chosen once: from `--task` (or the model and data when `auto`), with
`--metric module:function` replacing the score."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from edgecompress.errors import UserError
from edgecompress.tasks.base import Run, Task, torch_runner
from edgecompress.tasks.classification import ClassificationTask
from edgecompress.tasks.detection import DetectionTask

# the tasks `--task` names (its choices, with "auto"): kind -> Task(num_classes, model)
TASKS: dict[str, Callable[[int, nn.Module | None], Task]] = {
    "classify": lambda num_classes, model: ClassificationTask(),
    "detect": lambda num_classes, model: DetectionTask(num_classes=num_classes,
                                                       strides=tuple(getattr(model, "strides", (8, 16))),
                                                       box=getattr(model, "box_encoding", "softplus")),
}
METRIC_HINT = "--metric names a function evaluate(run, batches) -> points (higher is better), as package.module:function"


def select_task(kind: str, *, num_classes: int, model: nn.Module | None = None, metric: str | None = None) -> Task:
    """`kind` "classify" or "detect" (inputs.resolve.task_kind resolved `auto`); `metric`, when
    given, scores every model and engine instead of the task's own score."""
    if kind not in TASKS:
        raise UserError(f"unknown task {kind!r}", f"valid: {', '.join(TASKS)}")
    task: Task = TASKS[kind](num_classes, model)
    if metric:
        from edgecompress.inputs.specs import IMPORT_SPEC, import_object
        if not IMPORT_SPEC.match(metric):
            raise UserError(f"--metric {metric!r} is not package.module:function", METRIC_HINT)
        task = MetricTask(base=task, function=import_object(metric, what="metric"), spec=metric)
    return task


@dataclass(frozen=True)
class MetricTask:
    """The user's score on top of a task: `function(run, batches) -> points`, higher is better; the
    base task's objective and collate stay (they train the model, the function only judges it)."""

    base: Task
    function: Callable
    spec: str
    name: str = field(default="metric", init=False)
    unit: str = field(default="", init=False)

    @property
    def metric(self) -> str:
        return self.spec.rpartition(":")[2]

    @property
    def collate(self) -> Callable | None:
        return self.base.collate

    @property
    def finetune_lr(self) -> float:
        return self.base.finetune_lr

    def evaluate(self, run: Run, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> float:
        try:
            value = self.function(run, batches)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"the metric {self.spec} raised {type(exc).__name__}: {exc}", METRIC_HINT) from exc
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise UserError(f"the metric {self.spec} returned {type(value).__name__}, not a number", METRIC_HINT) from None
        if not math.isfinite(score):
            raise UserError(f"the metric {self.spec} returned {score}", METRIC_HINT)
        return score

    def evaluate_model(self, model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
        return self.evaluate(torch_runner(model.cpu()), batches)

    def objective(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                  images: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
        return self.base.objective(student, teacher, targets, images=images, temperature=temperature, alpha=alpha)
