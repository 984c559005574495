"""PyTorch-side measurements shared by the stages: accuracy, BatchNorm recalibration, MACs, params."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent of a PyTorch model on tensors already in memory."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / max(1, len(x))


def runner_accuracy(run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor, *,
                    batch_size: int = 1, on_batch: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy in percent of a built engine (`run` maps an NCHW float32 batch to logits)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = np.asarray(run(x[i:i + batch_size].numpy().astype(np.float32)))
        correct += int((logits.argmax(1) == y[i:i + batch_size].numpy()).sum())
        if on_batch:
            on_batch(min(len(x), i + batch_size))
    return 100.0 * correct / max(1, len(x))


@torch.no_grad()
def stream_accuracy(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent of a PyTorch model over (images, labels) batches (a DataLoader),
    run on `device` (mixed precision on CUDA); the model is back on the CPU afterwards."""
    from edgecompress.pipeline.device import autocast, on_device
    device = torch.device(device)
    model.eval()
    correct = seen = 0
    with on_device(device, model), autocast(device):
        for x, y in batches:
            pred = model(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((pred == torch.as_tensor(y)).sum())
            seen += len(y)
    return 100.0 * correct / max(1, seen)


def stream_runner_accuracy(run: Callable[[np.ndarray], np.ndarray], batches: Iterable, *,
                           on_batch: Callable[[int], None] | None = None) -> float:
    """Top-1 accuracy in percent of a built engine over (images, labels) batches."""
    correct = seen = 0
    for x, y in batches:
        logits = np.asarray(run(np.ascontiguousarray(torch.as_tensor(x).numpy(), dtype=np.float32)))
        correct += int((logits.argmax(1) == torch.as_tensor(y).numpy()).sum())
        seen += len(y)
        if on_batch:
            on_batch(seen)
    return 100.0 * correct / max(1, seen)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], *,
                   device: torch.device | str = "cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var on training batches (cumulative average).

    Pruning removes channels that fed the next layers, so the stored statistics no longer describe
    the activations; recomputing them recovers most of the accuracy without any training.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average over all batches seen
    from edgecompress.pipeline.device import autocast, on_device
    device = torch.device(device)
    model.train()
    with on_device(device, model), autocast(device):
        for x in batches:
            model(x.to(device, non_blocking=True))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def macs_and_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-accumulates of one image (what pruning papers call FLOPs) and parameter count."""
    import torch_pruning as tp
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(macs), int(params)
