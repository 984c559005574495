"""`--train-device auto|cpu|cuda[:N]`: where training work runs (importance batches, probe
distillation, BatchNorm recalibration, fine-tuning, PyTorch evaluation). Latency is always the
target's. Models live on the CPU between steps: each training function moves what it trains to
the device and back, so ONNX export and torch.save always see CPU modules.

On CUDA the forward passes run under torch.autocast (bfloat16 where the GPU has it, else float16
with a GradScaler for the backward pass).
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

from edgecompress.errors import UserError

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
HINT = "valid: auto (CUDA when present), cpu, cuda, cuda:N"


def check_spec(spec: str) -> str | None:
    """A problem with the flag's spelling (validated with the config), else None."""
    if not DEVICE_SPEC.match(spec or ""):
        return f"unknown --train-device {spec!r}"
    return None


def resolve_device(spec: str = "auto") -> torch.device:
    """The device `spec` names on this machine; asking for CUDA where there is none is the user's error.
    Plain `cuda` under torchrun is this rank's GPU (LOCAL_RANK)."""
    problem = check_spec(spec)
    if problem:
        raise UserError(problem, HINT)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--train-device {spec}: this machine has no CUDA device "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})",
                        "use --train-device cpu or auto, or install a CUDA build of PyTorch")
    index = int(spec.partition(":")[2]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise UserError(f"--train-device {spec}: there are {torch.cuda.device_count()} CUDA device(s)",
                        f"give cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def autocast(device: torch.device):
    """Mixed precision on CUDA, nothing on the CPU (its bfloat16 autocast is slower than float32
    on most CPUs and changes the probes' accuracies)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(device: torch.device):
    """float16 gradients underflow without scaling; bfloat16 and float32 need none."""
    enabled = device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


@contextlib.contextmanager
def on_device(device: torch.device, *modules: torch.nn.Module):
    """Move `modules` to `device` for the block and back to the CPU after it (also on error)."""
    if device.type == "cpu":
        yield
        return
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")
