"""PyTorch-side measurements: top-1 accuracy, BatchNorm recalibration, MACs and parameters.

Both the accuracy and the BatchNorm statistics decide what ships (the accuracy floor, probes
accepted or rejected, keep-or-revert after fine-tuning), and the shipped engine runs in FP32 or
INT8 calibrated from FP32: so they run in float32 on every device, never under autocast, and with
CUDA's TF32 convolutions off (device.exact_float32).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from edgecompress.training.device import exact_float32, on_device


def tensor_batches(x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> Iterator[tuple]:
    """(images, labels) batches of tensors already in memory."""
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def model_accuracy(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent of a PyTorch model over (images, labels) batches (a DataLoader,
    or `tensor_batches`), run on `device` in float32; the model is back on the CPU afterwards."""
    device = torch.device(device)
    model.eval()
    correct = seen = 0
    with on_device(device, model), exact_float32():
        for x, y in batches:
            pred = model(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((pred == torch.as_tensor(y)).sum())
            seen += len(y)
    return 100.0 * correct / max(1, seen)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu",
                   max_batches: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var on training batches (cumulative average),
    in place; `batches` yields images or (images, labels) pairs.

    Pruning removes channels that fed the next layers, so the stored statistics no longer describe
    the activations; recomputing them recovers most of the accuracy without any training.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average over all batches seen
    device = torch.device(device)
    model.train()
    try:
        with on_device(device, model), exact_float32():
            for i, item in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = item[0] if isinstance(item, (tuple, list)) else item
                model(x.to(device, non_blocking=True))
    finally:
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
