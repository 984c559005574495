"""torchrun support: rank 0 runs the pipeline; the other ranks join only the fine-tuning (a leaf:
the ranks' work itself is `pipeline/stages/finetune.py`'s `worker`).

    torchrun --nproc_per_node=2 -m edgecompress.cli --target x86-cpu --max-acc-drop 1

The search, export and build are single-process work (they measure latency, which other
processes on the same cores would disturb), so ranks > 0 wait for one message from rank 0: either
the student to distill (then they train it with DDP on their shard and exit) or "nothing to do".
Only rank 0 opens the run directory; the others never write.

Messages go over gloo (CPU objects, a generous timeout); with `--train-device cuda` the DDP
gradients go over a second group on NCCL (`training_group`), each rank on its LOCAL_RANK GPU --
unless ranks share a GPU (more processes than GPUs), which NCCL refuses: then over gloo.
"""
from __future__ import annotations

import datetime
import io
import os

import torch

# The search before fine-tuning takes minutes; gloo's default 30-minute timeout is kept generous.
WAIT = datetime.timedelta(hours=12)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_GROUPS: dict = {}


def training_group(device: torch.device):
    """The process group DDP averages gradients over: NCCL for CUDA tensors when every rank has a
    GPU of its own, else the default (gloo, which also reduces CUDA tensors). Collective: every
    rank calls it, in the same order (the first distill of each)."""
    if device.type != "cuda":
        return None
    if "cuda" not in _GROUPS:
        import torch.distributed as dist
        _GROUPS["cuda"] = dist.new_group(backend="nccl") if _own_gpus(dist) else None
    return _GROUPS["cuda"]


def _own_gpus(dist) -> bool:
    """Whether no two ranks share a GPU, agreed by all ranks (new_group must be called by all or
    none). Two ranks on one GPU make NCCL fail at its first collective ("Duplicate GPU detected",
    ncclInvalidUsage, NCCL >= 2.5); plain `cuda` with more processes than GPUs does exactly that."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    own = torch.tensor([int(ranks_here <= torch.cuda.device_count())])
    dist.all_reduce(own, op=dist.ReduceOp.MIN)   # over the default group: gloo, a CPU tensor
    return bool(own.item())


class Coordinator:
    def __init__(self) -> None:
        import torch.distributed as dist
        self.dist = dist
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._sent = False

    def _send(self, message: dict) -> None:
        self._sent = True
        self.dist.broadcast_object_list([message], src=0)

    def start_finetune(self, student: torch.nn.Module, *, freeze_bn: bool = False) -> None:
        """Rank 0: give the student (whole module, pickled) and how it trains to the other ranks."""
        buf = io.BytesIO()
        torch.save(student, buf)
        self._send({"cmd": "finetune", "student": buf.getvalue(), "freeze_bn": freeze_bn})

    def finish(self) -> None:
        """Rank 0, at the end (also after an error): release ranks still waiting."""
        if not self._sent:
            self._send({"cmd": "exit"})
        self.dist.destroy_process_group()

    def wait(self) -> dict:
        """Ranks > 0: the one message from rank 0."""
        box = [None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]
