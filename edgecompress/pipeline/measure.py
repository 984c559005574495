"""Accuracy of a PyTorch model or a built engine on one of the run's splits."""
from __future__ import annotations

from typing import Callable

from torch import nn

from edgecompress.inputs.splits import EVAL_BATCH
from edgecompress.pipeline.context import Context
from edgecompress.targets.engines import Runner, engine_accuracy
from edgecompress.training.evaluation import model_accuracy

CHANCE_FACTOR = 1.5      # the original below 1.5x chance accuracy: warn before the search


def accuracy(ctx: Context, model: nn.Module, split: str = "val") -> float | None:
    """PyTorch top-1 accuracy in percent on a split, on the training device; None without it."""
    if not ctx.data.has(split):
        return None
    return model_accuracy(model, ctx.data.batches(split), device=ctx.device)


def run_accuracy(ctx: Context, run: Runner, split: str = "val", *,
                 on_batch: Callable[[int], None] | None = None) -> float | None:
    """Top-1 accuracy of a built engine (`run`: NCHW float32 -> logits) on a split; None without it."""
    if not ctx.data.has(split):
        return None
    return engine_accuracy(run, ctx.data.batches(split, batch_size=EVAL_BATCH), on_batch=on_batch)


def original_accuracy(ctx: Context) -> float:
    """The original's validation accuracy, with a loud warning when it is near chance."""
    acc = accuracy(ctx, ctx.original)
    chance = 100.0 / max(1, ctx.data.num_classes)
    if acc < CHANCE_FACTOR * chance:
        pre = ctx.data.preprocess
        text = (f"the original model's validation accuracy is {acc:.2f} %, near chance ({chance:.1f} % for "
                f"{ctx.data.num_classes} classes): likely causes are the wrong preprocessing (this run: "
                f"{pre.describe() if pre else 'as given'}; declare the model's own with "
                f"--preprocess / --input-size / --resize / --crop / --mean / --std), labels that do not match "
                f"the model's classes (class folders are sorted by name), or untrained / wrong weights")
        ctx.ui.say("!" * 80 + "\n  WARNING: " + text + "\n" + "!" * 80)
        ctx.note(text)
    return acc
