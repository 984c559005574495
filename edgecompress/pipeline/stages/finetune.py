"""Stage `finetune`: knowledge distillation from the original model into the searched one.

Under `torchrun --nproc_per_node=N -m edgecompress.cli ...` rank 0 runs the pipeline and, at this
stage only, hands the student to the other ranks (`worker` below, over training/distributed.py); all ranks train
it with DistributedDataParallel on their shard of the data, and rank 0 alone writes the result.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from edgecompress.inputs import resolve_inputs
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.measure import accuracy
from edgecompress.pipeline.records import FinetuneRecord
from edgecompress.pipeline.stage import StageOutput
from edgecompress.tasks import points, select_task
from edgecompress.training.device import resolve_device
from edgecompress.training.distill import DistillConfig, distill, steps_for
from edgecompress.training.distributed import Coordinator


def finetune_plan(config, train: Dataset, world_size: int, *, task, freeze_bn: bool) -> tuple[Dataset, int, DistillConfig]:
    """(dataset, steps per rank, distillation settings): the same on every rank, from the config and task."""
    dataset = train
    if config.finetune_samples and config.finetune_samples < len(train):
        # A seeded subset per run: an epoch of all 55,000 images takes minutes on a small CPU.
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed + 2))
        dataset = Subset(train, idx[:config.finetune_samples].tolist())
    settings = DistillConfig(temperature=config.temperature, alpha=config.alpha, lr=config.finetune_lr(task),
                             batch_size=config.batch_size, augment=config.augment, freeze_bn=freeze_bn)
    steps = steps_for(config.finetune_epochs, dataset_len=len(dataset), batch_size=settings.batch_size,
                      world_size=world_size)
    if steps:   # never fewer images than a search probe trained on: an epoch of the detection demo's
        # 2,000 images is 16 steps, against a probe's 100, and lowered a YOLOv8n's mAP50-95 by 0.4-0.5
        steps = max(steps, math.ceil(config.probe_finetune_steps / world_size))
    return dataset, steps, settings


class FinetuneStage:
    name, what = "finetune", "knowledge distillation from the original model"

    def run(self, ctx: Context, out: Path) -> StageOutput:
        cfg = ctx.config
        if ctx.results.prune.unpruned:   # the original ships: nothing to distil into it
            ctx.ui.say("  the unpruned model ships: no fine-tuning")
            torch.save(ctx.original, out / "model_pruned.pt")
            acc = ctx.results.baseline.accuracy
            return StageOutput(files={"pruned_model": "model_pruned.pt"}, data=FinetuneRecord.from_dict({
                "accuracy_before": acc, "accuracy_after": acc, "kept": "unpruned", "steps": 0, "world_size": 1}))
        student = ctx.rundir.load_model("prune", "searched_model")
        before = accuracy(ctx, student)
        world_size = ctx.dist.world_size if ctx.dist else 1
        frozen = ctx.results.baseline.bn_frozen
        dataset, steps, settings = finetune_plan(cfg, ctx.data.train, world_size, task=ctx.task, freeze_bn=frozen)
        ctx.ui.say(f"  {steps} steps x {settings.batch_size} images x {world_size} process(es), "
                   f"T={settings.temperature}, alpha={settings.alpha}, lr={settings.lr} (cosine)"
                   + (", BatchNorm statistics frozen" if frozen else ""))
        if ctx.dist:
            ctx.dist.start_finetune(student, freeze_bn=frozen)
        with ctx.ui.progress("distilling", steps) as bar:
            losses = distill(student, ctx.original, dataset, steps=steps, config=settings, seed=cfg.seed,
                             distributed=ctx.dist is not None, device=ctx.device, workers=ctx.data.workers,
                             task=ctx.task, on_step=lambda i, loss: bar.update(i, info=f"loss {loss:.3f}"))
        after = accuracy(ctx, student)
        kept = "finetuned"
        if after < before:
            ctx.note(f"fine-tuning lowered validation {ctx.task.metric} ({points(ctx.task, before)} -> "
                     f"{points(ctx.task, after)}); "
                     f"the searched model is kept")
            student, kept = ctx.rundir.load_model("prune", "searched_model"), "searched"
        ctx.ui.say(f"  validation {ctx.task.metric} {points(ctx.task, before)} -> {points(ctx.task, after)}")
        torch.save(student, out / "model_pruned.pt")
        return StageOutput(files={"pruned_model": "model_pruned.pt"}, data=FinetuneRecord.from_dict({
            "accuracy_before": before, "accuracy_after": after, "kept": kept, "steps": steps,
            "world_size": world_size, "images_per_epoch": len(dataset), "epochs": cfg.finetune_epochs,
            "temperature": settings.temperature, "alpha": settings.alpha, "lr": settings.lr,
            "batch_size": settings.batch_size, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}))


def worker(config, coordinator: Coordinator) -> int:
    """Ranks > 0 under torchrun: resolve the same data and teacher, receive the student, train, exit."""
    device = resolve_device(config.train_device)
    data, loaded, _ = resolve_inputs(config)
    teacher = loaded.model.eval()
    task = select_task(data.kind, num_classes=data.num_classes, model=teacher, metric=config.metric)
    message = coordinator.wait()
    if message["cmd"] == "finetune":
        student = torch.load(io.BytesIO(message["student"]), map_location="cpu", weights_only=False)
        dataset, steps, settings = finetune_plan(config, data.train, coordinator.world_size, task=task,
                                                 freeze_bn=message.get("freeze_bn", False))
        distill(student, teacher, dataset, steps=steps, config=settings, seed=config.seed, distributed=True,
                device=device, workers=data.workers, task=task)
    coordinator.dist.destroy_process_group()
    return 0
