"""`--train-device auto|cpu|cuda[:N]`: where training work runs (probe distillation, BatchNorm
recalibration, fine-tuning, PyTorch evaluation; importance runs on the CPU). Latency is always the
target's. Models live on the CPU between steps: each training function moves what it trains to
the device and back, so ONNX export and torch.save always see CPU modules.

On CUDA the training forward passes run under torch.autocast (bfloat16 where the GPU has it, else
float16 with a GradScaler for the backward pass); decisions (accuracy, BatchNorm statistics) stay
float32, TF32 off (`exact_float32`). Under torchrun each rank takes GPU `LOCAL_RANK % device_count`
and makes it current, so no rank opens a context on another's GPU (ranks sharing a GPU average
gradients over gloo: training/distributed.py).
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
    """The device `spec` names on this machine, made current; asking for CUDA where there is none
    is the user's error. Plain `cuda` (or `auto`) under torchrun is this rank's GPU: LOCAL_RANK
    modulo the GPUs present (more ranks than GPUs share them round-robin)."""
    problem = check_spec(spec)
    if problem:
        raise UserError(problem, HINT)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--train-device {spec}: this machine has no CUDA device "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})",
                        "use --train-device cpu or auto, or install a CUDA build of PyTorch")
    device = torch.device("cuda", cuda_index(spec, count=torch.cuda.device_count(),
                                             local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
    torch.cuda.set_device(device)
    # The resume and determinism guarantees compare bytes: deterministic cuDNN kernels.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return device


def cuda_index(spec: str, *, count: int, local_rank: int) -> int:
    """The GPU index `spec` names: `cuda:N` exactly (checked), `cuda`/`auto` this rank's share."""
    if ":" not in spec:
        return local_rank % count
    index = int(spec.partition(":")[2])
    if index >= count:
        raise UserError(f"--train-device {spec}: there are {count} CUDA device(s)",
                        f"give cuda:0 .. cuda:{count - 1}, or plain cuda")
    return index


def autocast(device: torch.device):
    """Mixed precision for training steps on CUDA, nothing on the CPU (its bfloat16 autocast is
    slower than float32 on most CPUs and changes the probes' accuracies)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


@contextlib.contextmanager
def exact_float32():
    """IEEE float32 convolutions and matmuls for the block: PyTorch lets cuDNN run float32
    convolutions as TF32 by default (`torch.backends.cudnn.allow_tf32`, Ampere and later), which
    keeps 10 of float32's 23 mantissa bits; the CPU ignores both flags. Restored after."""
    cudnn, cublas = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, cublas


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs with native support (compute capability 8.0+: Ampere, Hopper), else float16;
    asked of `device` itself, not of whichever GPU is current."""
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def grad_scaler(device: torch.device):
    """A GradScaler for float16 training on CUDA (its gradients underflow unscaled), else None:
    bfloat16 and float32 need none. `torch.amp.GradScaler` arrived in torch 2.3; older releases
    have it as `torch.cuda.amp.GradScaler`."""
    if device.type != "cuda" or amp_dtype(device) != torch.float16:
        return None
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


@contextlib.contextmanager
def on_device(device: torch.device, *modules: torch.nn.Module):
    """Move `modules` to `device` for the block and back to the CPU after it (also on error).
    Not channels-last: it made this CPU's training steps 1.2-1.7x faster, but with torch 2.13 pruned
    models crashed in the backward pass (SIGSEGV, heap corruption: "free(): invalid pointer") in the
    slow test suite, grouped and plain networks alike (docs/benchmarks.md, session 23)."""
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
