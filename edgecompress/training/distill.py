"""Knowledge distillation from the original model (teacher) into the pruned one (student).

Loss = α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·cross-entropy(student, label)
(Hinton et al. 2015; the T² keeps the soft-loss gradients on the scale of the hard loss).
Under `torchrun` (torch.distributed initialised, world size > 1) the student is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA: training/distributed.py) and each rank reads
its shard through a DistributedSampler; every rank returns the same weights because DDP averages
the gradients. Training runs on `device` (mixed precision on CUDA); both models come back to the
CPU. `augment`: a random shift (pad + crop) and horizontal flip per image, on the device.
Autocast covers the training forward passes only: accuracy and BatchNorm statistics that decide
what ships are measured in float32 (training/evaluation.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecompress.inputs.loaders import loader
from edgecompress.training.device import autocast, grad_scaler, on_device
from edgecompress.training.distributed import training_group


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.9           # weight of the soft (teacher) loss
    lr: float = 0.01             # fine-tuning a trained network: 10x below the training LR
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False        # random crop (pad by 1/14 of the side) + horizontal flip
    freeze_bn: bool = False      # BatchNorm keeps its running statistics (eval mode) while the weights train


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not launched by torchrun."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def steps_for(epochs: float, *, dataset_len: int, batch_size: int, world_size: int = 1) -> int:
    return max(0, math.ceil(epochs * dataset_len / (batch_size * world_size)))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def _objective(task) -> Callable[..., torch.Tensor]:
    """The task's fine-tuning loss; without a task, classification's."""
    if task is not None:
        return task.objective
    return lambda s, t, y, *, images, temperature, alpha: kd_loss(s, t, y, temperature=temperature, alpha=alpha)


def _loader(dataset: Dataset, *, batch_size: int, seed: int, rank: int, world_size: int, epoch: int,
            workers: int = 0, pin_memory: bool = False, collate: Callable | None = None) -> DataLoader:
    # A last short batch gives BatchNorm noisy statistics; drop it unless the data is that small.
    full = len(dataset) >= batch_size * world_size
    if world_size > 1:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return loader(dataset, batch_size=batch_size, sampler=sampler, drop_last=full, workers=workers,
                      pin_memory=pin_memory, collate=collate)
    return loader(dataset, batch_size=batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_last=full,
                  workers=workers, pin_memory=pin_memory, collate=collate)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift by up to 1/14 of the side (zero padding = the mean after normalisation) and a
    horizontal flip, per image; one gather for the whole batch (on the batch's device)."""
    n, c, h, w = x.shape
    pad = max(1, round(min(h, w) / 14))
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # n, 1, h, 1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # n, 1, 1, w
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip.to(out.device)] = out[flip.to(out.device)].flip(-1)
    return out


def distill(student: nn.Module, teacher: nn.Module, dataset: Dataset, *, steps: int,
            config: DistillConfig = DistillConfig(), seed: int = 0, distributed: bool = False,
            on_step: Callable[[int, float], None] | None = None, device: torch.device | str = "cpu",
            workers: int = 0, task=None) -> list[float]:
    """Train `student` in place for `steps` optimiser steps (per rank); returns the loss per step.

    `task` (tasks/base.py): its `objective` is the loss and its `collate` batches the items; None:
    classification (`kd_loss`, torch's collate). `augment` (flips) applies to classification only:
    a detector's boxes would have to flip with the image.

    `distributed`: train with DDP across the torchrun ranks (each must call this with the same
    steps). Off for work only rank 0 does (the search's probe distillation): wrapping in DDP there
    would wait forever for ranks that are not training.
    """
    if steps <= 0:
        return []
    device = torch.device(device)
    with on_device(device, student, teacher):
        losses = _train(student, teacher, dataset, steps=steps, config=config, seed=seed,
                        distributed=distributed, on_step=on_step, device=device, workers=workers, task=task)
    student.eval()
    return losses


def _train(student, teacher, dataset, *, steps, config, seed, distributed, on_step, device, workers, task) -> list[float]:
    rank, world_size = world() if distributed else (0, 1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 7)
    teacher.eval()
    model = student.train()
    if config.freeze_bn:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None,
            process_group=training_group(device))
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    scaler = grad_scaler(device)
    losses: list[float] = []
    objective = _objective(task)
    flips = config.augment and getattr(task, "name", "classify") == "classify"
    epoch = 0
    while len(losses) < steps:
        before = len(losses)
        for x, y in _loader(dataset, batch_size=config.batch_size, seed=seed, rank=rank, world_size=world_size,
                            epoch=epoch, workers=workers, pin_memory=device.type == "cuda",
                            collate=getattr(task, "collate", None)):
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            if flips:
                x = augment(x, gen)
            with autocast(device):
                with torch.no_grad():
                    teacher_logits = teacher(x)
                student_logits = model(x)
            loss = objective(student_logits.float(), teacher_logits.float(), y, images=x,
                             temperature=config.temperature, alpha=config.alpha)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:   # float16 autocast: scaled gradients
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            sched.step()
            losses.append(loss.item())
            if on_step:
                on_step(len(losses), losses[-1])
            if len(losses) >= steps:
                break
        if len(losses) == before:
            raise ValueError("distillation data set yields no batch")
        epoch += 1
    return losses
