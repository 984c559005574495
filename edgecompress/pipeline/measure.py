"""Accuracy of a PyTorch model or a built engine on one of the run's splits: the task's score
(top-1 in percent for a classifier, mAP50-95 in points for a detector, or the user's --metric)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from edgecompress.inputs.splits import EVAL_BATCH
from edgecompress.pipeline.context import Context
from edgecompress.targets.engines import Runner

CHANCE_FACTOR = 1.5      # the original below 1.5x chance accuracy: warn before the search


def accuracy(ctx: Context, model: nn.Module, split: str = "val") -> float | None:
    """The task's score of a PyTorch model on a split, on the training device; None without it."""
    if not ctx.data.has(split):
        return None
    return ctx.task.evaluate_model(model, ctx.data.batches(split), device=ctx.device)


def run_accuracy(ctx: Context, run: Runner, split: str = "val", *,
                 on_batch: Callable[[int], None] | None = None) -> float | None:
    """The task's score of a built engine (`run`: NCHW float32 -> outputs) on a split; None without it."""
    if not ctx.data.has(split):
        return None
    return ctx.task.evaluate(run, ctx.data.batches(split, batch_size=EVAL_BATCH), on_batch=on_batch)


def original_accuracy(ctx: Context) -> float:
    """The original's validation accuracy, with a loud warning when it is near chance."""
    acc = accuracy(ctx, ctx.original)
    chance = 100.0 / max(1, ctx.data.num_classes)
    if ctx.task.name == "classify" and acc < CHANCE_FACTOR * chance:
        pre = ctx.data.preprocess
        text = (f"the original model's validation accuracy is {acc:.2f} %, near chance ({chance:.1f} % for "
                f"{ctx.data.num_classes} classes): likely causes are the wrong preprocessing (this run: "
                f"{pre.describe() if pre else 'as given'}; declare the model's own with "
                f"--preprocess / --input-size / --resize / --crop / --mean / --std), labels that do not match "
                f"the model's classes (class folders are sorted by name), or untrained / wrong weights")
        ctx.ui.say("!" * 80 + "\n  WARNING: " + text + "\n" + "!" * 80)
        ctx.note(text)
    return acc
